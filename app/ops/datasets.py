"""Uploaded datasets: checks of their files against their rows, and the retention."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from app.db import datasets as db_datasets
from app.db.models import utcnow
from app.engine.checkpoint import sha256_file
from app.ops.findings import Finding
from app.store import DatasetFiles, Store

# the name of an uploaded dataset file (app.store.DatasetFiles): only such a file is ever removed
_DATASET_FILE = re.compile(r"^[0-9a-f]{64}\.(jsonl|ndjson|json|csv|tsv)$")


def _remote(path: str) -> bool:
    return str(path).startswith("s3://")


def check_datasets(
    s: Session, counts: dict | None = None, files: DatasetFiles | None = None
) -> list[Finding]:
    """Each dataset row against its file (a local path) or object (an s3:// location, read through
    `files`; with the S3 backend, a node's empty cache is never a missing dataset)."""
    rows = db_datasets.list_datasets(s)
    if counts is not None:
        counts["datasets"] = len(rows)
    found = []
    for ds in rows:
        if _remote(ds.path):
            state = files.check(ds.path, ds.sha256) if files is not None and files.kind == "s3" else None
            if state is not None:
                kind = "dataset_missing" if state == "missing" else "dataset_mismatch"
                target = (ds.id, None if state == "missing" else ds.path)
                found.append(
                    Finding(
                        kind,
                        f"dataset {ds.id}",
                        f"its object {ds.path} is {state}",
                        True,
                        "drop_dataset",
                        target,
                    )
                )
            continue
        p = Path(ds.path)
        if not p.is_file():
            found.append(
                Finding(
                    "dataset_missing",
                    f"dataset {ds.id}",
                    f"its file {p} is missing",
                    True,
                    "drop_dataset",
                    (ds.id, None),
                )
            )
        elif sha256_file(p) != ds.sha256:
            found.append(
                Finding(
                    "dataset_mismatch",
                    f"dataset {ds.id}",
                    f"its file {p} has changed",
                    True,
                    "drop_dataset",
                    (ds.id, p),
                )
            )
    return found


def check_expired_datasets(s: Session, retention_days: float | None) -> list[Finding]:
    """Datasets older than `retention_days` that no queued or running job refers to (0 or None:
    kept forever)."""
    if not retention_days or retention_days <= 0:
        return []
    found = []
    for ds in db_datasets.expired_datasets(s, utcnow() - timedelta(days=retention_days)):
        msg = f"uploaded {ds.created_at:%Y-%m-%d}, older than the retention of {retention_days:g} days"
        found.append(
            Finding("dataset_expired", f"dataset {ds.id}", msg, True, "expire_dataset", (ds.id, ds.path))
        )
    return found


def drop_dataset(s: Session, store: Store, f: Finding, files: DatasetFiles | None = None) -> list[str]:
    """Repair of a missing or changed dataset file: drop its row, quarantine a changed file."""
    ds_id, path = f.target
    done = []
    if db_datasets.drop_dataset(s, ds_id):
        done.append(f"dropped dataset {ds_id}")
    if path is not None and _remote(str(path)):
        if files is not None and files.kind == "s3":
            files.quarantine(str(path), f"dataset.{str(path).rpartition('/')[2]}")  # type: ignore[attr-defined]
    elif path is not None and path.exists() and store.kind == "local":
        store.quarantine(path, f"dataset.{path.name}")  # type: ignore[union-attr]
    return done


def expire_dataset(s: Session, f: Finding, files: DatasetFiles | None = None) -> list[str]:
    """Repair of a dataset past the retention: its row, and its file unless another upload shares it
    (only an uploaded dataset's own file name is ever removed)."""
    ds_id, path = f.target
    if ds_id in db_datasets.datasets_in_use(s):  # a job was queued meanwhile
        return []
    if not db_datasets.drop_dataset(s, ds_id):
        return []
    if _remote(path):
        if files is not None and files.kind == "s3" and not db_datasets.path_shared(s, path):
            files.delete(path)  # only <prefix>/datasets/<sha256>.<ext> of this store
        return [f"deleted dataset {ds_id}: older than the retention"]
    p = Path(path)
    if _DATASET_FILE.match(p.name) and not db_datasets.path_shared(s, path):
        p.unlink(missing_ok=True)
    return [f"deleted dataset {ds_id}: older than the retention"]
