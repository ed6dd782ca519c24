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
from app.store import PromptStore

# the name of an uploaded dataset file (app.store.DatasetFiles): only such a file is ever removed
_DATASET_FILE = re.compile(r"^[0-9a-f]{64}\.(jsonl|ndjson|json|csv|tsv)$")


def check_datasets(s: Session, counts: dict | None = None) -> list[Finding]:
    rows = db_datasets.list_datasets(s)
    if counts is not None:
        counts["datasets"] = len(rows)
    found = []
    for ds in rows:
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


def drop_dataset(s: Session, store: PromptStore, f: Finding) -> list[str]:
    """Repair of a missing or changed dataset file: drop its row, quarantine a changed file."""
    ds_id, path = f.target
    done = []
    if db_datasets.drop_dataset(s, ds_id):
        done.append(f"dropped dataset {ds_id}")
    if path is not None and path.exists():
        store.quarantine(path, f"dataset.{path.name}")
    return done


def expire_dataset(s: Session, f: Finding) -> list[str]:
    """Repair of a dataset past the retention: its row, and its file unless another upload shares it
    (only an uploaded dataset's own file name is ever removed)."""
    ds_id, path = f.target
    if ds_id in db_datasets.datasets_in_use(s):  # a job was queued meanwhile
        return []
    if not db_datasets.drop_dataset(s, ds_id):
        return []
    p = Path(path)
    if _DATASET_FILE.match(p.name) and not db_datasets.path_shared(s, path):
        p.unlink(missing_ok=True)
    return [f"deleted dataset {ds_id}: older than the retention"]
