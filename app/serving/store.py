"""The prompt store on disk: one folder a task, one safetensors file a version.

    <root>/<task>/v0001.safetensors   the checkpoint (app.engine.checkpoint format)
    <root>/<task>/v0001.json          sidecar: sha256, size, and the checkpoint's metadata for humans

Files are written atomically (temp file, fsync, rename, fsync of the folder); the sidecar is
written after the checkpoint, so a checkpoint without a sidecar is possible after a crash and is
handled (its sha256 is computed), never the reverse. The database (app.db) records which
versions exist and which is active; `sync_store_to_db` reconciles the two at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.db import repo
from app.engine.checkpoint import CheckpointError, atomic_write, read_metadata, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

_VERSION_FILE = re.compile(r"^v(\d{4,})\.safetensors$")
_TEMP_FILE = re.compile(r"^\..+\.tmp$")


class StoreError(RuntimeError):
    """A stored version is missing, corrupt, or cannot be written."""


@dataclass(frozen=True)
class StoredFile:
    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ScannedVersion(StoredFile):
    task: str = ""
    version: int = 0
    sidecar: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def rel_path(self) -> str:
        return f"{self.task}/{self.path.name}"


def version_filename(version: int) -> str:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    return f"v{version:04d}.safetensors"


class PromptStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    def task_dir(self, task: str) -> Path:
        return self.root / repo.validate_task_name(task)

    def path(self, task: str, version: int) -> Path:
        return self.task_dir(task) / version_filename(version)

    def sidecar_path(self, task: str, version: int) -> Path:
        return self.path(task, version).with_suffix(".json")

    def rel_path(self, task: str, version: int) -> str:
        """The path relative to the root, as recorded in the database."""
        return f"{repo.validate_task_name(task)}/{version_filename(version)}"

    def exists(self, task: str, version: int) -> bool:
        return self.path(task, version).is_file()

    def versions(self, task: str) -> list[int]:
        d = self.task_dir(task)
        if not d.is_dir():
            return []
        return sorted(
            int(m.group(1)) for p in d.iterdir() if (m := _VERSION_FILE.match(p.name)) and p.is_file()
        )

    # ------------------------------------------------------------------ write / read
    def write_version(
        self,
        task: str,
        version: int,
        data: bytes,
        meta: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> StoredFile:
        """Write a version atomically, then its sidecar. Refuses to replace an existing version
        unless `overwrite` (two writers must never silently replace each other's file)."""
        path = self.path(task, version)
        if path.exists() and not overwrite:
            raise StoreError(f"task {task!r} version {version} already exists in the store")
        digest = sha256_bytes(data)
        try:
            atomic_write(path, data)
            sidecar = {
                "task": task,
                "version": version,
                "file": path.name,
                "sha256": digest,
                "size_bytes": len(data),
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "metadata": meta or {},
            }
            atomic_write(
                path.with_suffix(".json"),
                (json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n").encode(),
            )
        except OSError as e:
            raise StoreError(f"could not write task {task!r} version {version}: {e}") from e
        return StoredFile(path=path, sha256=digest, size_bytes=len(data))

    def read_version(self, task: str, version: int, expected_sha256: str | None) -> bytes:
        """The checkpoint bytes; raises StoreError when missing or when the sha256 differs."""
        path = self.path(task, version)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise StoreError(f"task {task!r} version {version}: file {path} is missing from the store") from e
        except OSError as e:
            raise StoreError(f"task {task!r} version {version}: cannot read {path}: {e}") from e
        if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
            raise StoreError(
                f"task {task!r} version {version}: {path} does not match its recorded sha256 "
                f"({expected_sha256[:12]}…); the file is corrupt or was replaced"
            )
        return data

    def read_sidecar(self, task: str, version: int) -> dict[str, Any] | None:
        p = self.sidecar_path(task, version)
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    # ------------------------------------------------------------------ delete
    def delete_version(self, task: str, version: int) -> None:
        path = self.path(task, version)
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        d = path.parent
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()

    def delete_task(self, task: str) -> None:
        d = self.task_dir(task)
        if d.is_dir():
            shutil.rmtree(d)

    # ------------------------------------------------------------------ scan / cleanup
    def scan(self, *, verify: bool = True) -> list[ScannedVersion]:
        """What is on disk: every `<task>/vNNNN.safetensors` under a valid task folder (temp files and
        anything else ignored). With `verify`, sha256 is computed from the file; otherwise it is the
        sidecar's (or '' when there is none)."""
        found: list[ScannedVersion] = []
        if not self.root.is_dir():
            return found
        for d in sorted(self.root.iterdir()):
            if not d.is_dir() or not re.fullmatch(repo.TASK_NAME_RE, d.name):
                continue
            for p in sorted(d.iterdir()):
                m = _VERSION_FILE.match(p.name)
                if not m or not p.is_file():
                    continue
                version = int(m.group(1))
                sidecar = self.read_sidecar(d.name, version)
                digest = sha256_file(p) if verify else str((sidecar or {}).get("sha256", ""))
                found.append(
                    ScannedVersion(
                        path=p,
                        sha256=digest,
                        size_bytes=p.stat().st_size,
                        task=d.name,
                        version=version,
                        sidecar=sidecar,
                    )
                )
        return found

    def cleanup_temp(self, min_age_s: float = 60.0) -> list[Path]:
        """Remove temp files left by interrupted writes (older than `min_age_s`, so a write in
        progress in another process is left alone). Returns what was removed."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not _TEMP_FILE.match(name):
                    continue
                p = Path(dirpath) / name
                try:
                    if now - p.stat().st_mtime >= min_age_s:
                        p.unlink()
                        removed.append(p)
                except FileNotFoundError:
                    continue
        return removed


# ---------------------------------------------------------------------------- store <-> db


def _register(session: Session, entry: ScannedVersion) -> str | None:
    """Register one on-disk version; returns a log line, or None when it was skipped."""
    where = f"{entry.task} v{entry.version}"
    sidecar_sha = (entry.sidecar or {}).get("sha256")
    if sidecar_sha and sidecar_sha != entry.sha256:
        log.warning("store: %s skipped: its sha256 does not match its sidecar (corrupt file?)", where)
        return None
    try:
        doc = read_metadata(entry.path)
    except (CheckpointError, OSError) as e:
        log.warning("store: %s skipped: %s", where, e)
        return None
    spec = doc.get("spec") or {}
    task_type = spec.get("task_type")
    if not task_type:
        log.warning("store: %s skipped: its metadata holds no task spec", where)
        return None
    training = dict(doc.get("training") or {})
    if doc.get("data"):
        training.setdefault("data", doc["data"])
    try:
        repo.add_version(
            session,
            name=entry.task,
            task_type=task_type,
            labels=list(spec.get("labels") or []),
            file=entry.rel_path,
            sha256=entry.sha256,
            size_bytes=entry.size_bytes,
            spec=spec,
            metrics=doc.get("metrics") or {},
            training=training,
            source=doc.get("source") or "store",
            activate=False,
            version=entry.version,
        )
    except (repo.Conflict, ValueError) as e:
        session.rollback()
        log.warning("store: %s skipped: %s", where, e)
        return None
    return f"registered {where}"


def sync_store_to_db(session: Session, store: PromptStore) -> list[str]:
    """Make the database agree with the files: register versions found on disk but not in the DB
    (sha256 checked against the sidecar, metadata read from the checkpoint), drop DB versions whose
    file is gone, and activate the newest version of any task without an active one. Returns a
    line for each change."""
    changes: list[str] = []
    # no hashing here: registered files are checked against their recorded sha256 when they are
    # loaded; only files about to be registered are hashed (below), so a start with thousands of
    # tasks does not read every file
    on_disk = {(e.task, e.version): e for e in store.scan(verify=False)}
    in_db = {
        (v.task_name, v.version): v
        for t in repo.list_tasks(session)
        for v in repo.get_versions(session, t.name)
    }

    # tasks that have no active version yet get their newest one, not merely the first registered
    unactivated = {task for task, _ in on_disk} - {
        t.name for t in repo.list_tasks(session) if t.active_version
    }
    for key, entry in sorted(on_disk.items()):
        if key in in_db:
            continue
        entry = dataclasses.replace(entry, sha256=sha256_file(entry.path))
        if line := _register(session, entry):
            changes.append(line)

    for (task, version), row in sorted(in_db.items()):
        if (task, version) in on_disk:
            continue
        session.delete(row)
        session.commit()
        changes.append(f"dropped {task} v{version}: its file is missing from the store")

    for t in repo.list_tasks(session):
        versions = [v.version for v in repo.get_versions(session, t.name)]
        if not versions:
            session.delete(t)
            session.commit()
            changes.append(f"dropped task {t.name}: no version left in the store")
            continue
        if t.active_version not in versions or (t.name in unactivated and t.active_version != max(versions)):
            newest = max(versions)
            repo.activate_version(session, t.name, newest)
            changes.append(f"activated {t.name} v{newest}")
    for line in changes:
        log.info("store sync: %s", line)
    return changes
