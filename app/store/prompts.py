"""The prompt store on disk: one folder a task, one safetensors file a version.

    <root>/<task>/v0001.safetensors   the checkpoint (app.engine.checkpoint format)
    <root>/<task>/v0001.json          sidecar: sha256, size, and the checkpoint's metadata for humans

Files are written atomically (temp file, fsync, rename, fsync of the folder); the sidecar is
written after the checkpoint, so a checkpoint without a sidecar is possible after a crash and is
handled (its sha256 is computed), never the reverse. Bytes only: which versions exist and which
is active is the database's business; app.versions writes both, app.ops reconciles them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.engine.checkpoint import (
    atomic_write,
    fsync_dir,
    read_metadata,
    sha256_bytes,
    sha256_file,
    write_temp,
)
from app.names import TASK_NAME_RE, validate_task_name
from app.store.sidecar import read_sidecar, write_sidecar

_VERSION_FILE = re.compile(r"^v(\d{4,})\.safetensors$")
_SIDECAR_FILE = re.compile(r"^v(\d{4,})\.json$")
TEMP_FILE = re.compile(r"^\..+\.tmp$")
QUARANTINE = ".quarantine"


class StoreError(RuntimeError):
    """A stored version is missing, corrupt, or cannot be written."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (an object store's endpoint down or failing after the retries)."""


class VersionTaken(StoreError):
    """The version's file already exists (another writer took the number)."""


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
    """The local folder backend (the default). app.store.s3.S3PromptStore has the same interface over
    S3-compatible object storage; app.store.backends picks one from the settings."""

    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ backend-neutral interface
    # (what app.versions and app.ops use, so that both backends serve them)
    def describe(self) -> str:
        return str(self.root.resolve())

    def local_roots(self) -> list[Path]:
        """Node-local folders where interrupted writes may leave temp files."""
        return [self.root]

    def present(self) -> bool:
        """Whether the store itself is there (a folder that is not mounted is not)."""
        return self.root.is_dir()

    def size_of(self, task: str, version: int) -> int:
        """The stored checkpoint's size; FileNotFoundError when it is not there."""
        return self.path(task, version).stat().st_size

    def hash_version(self, task: str, version: int) -> str:
        """The stored checkpoint's sha256, computed from its bytes; FileNotFoundError when missing."""
        return sha256_file(self.path(task, version))

    def read_header(self, task: str, version: int) -> dict[str, Any]:
        """The checkpoint's metadata document (raises CheckpointError, or OSError when missing)."""
        return read_metadata(self.path(task, version))

    def quarantine_version(self, task: str, version: int, label: str) -> str | None:
        """Move a version's checkpoint to the quarantine and remove its sidecar."""
        dest = self.quarantine(self.path(task, version), label)
        self.sidecar_path(task, version).unlink(missing_ok=True)
        return dest

    def delete_sidecar_file(self, sidecar: Path) -> None:
        """Remove a sidecar found by `orphan_sidecars`."""
        Path(sidecar).unlink(missing_ok=True)

    # ------------------------------------------------------------------ paths
    def task_dir(self, task: str) -> Path:
        return self.root / validate_task_name(task)

    def path(self, task: str, version: int) -> Path:
        return self.task_dir(task) / version_filename(version)

    def sidecar_path(self, task: str, version: int) -> Path:
        return self.path(task, version).with_suffix(".json")

    def rel_path(self, task: str, version: int) -> str:
        """The path relative to the root, as recorded in the database."""
        return f"{validate_task_name(task)}/{version_filename(version)}"

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
            raise VersionTaken(f"task {task!r} version {version} already exists in the store")
        digest = sha256_bytes(data)
        try:
            if overwrite:
                atomic_write(path, data)
            elif not _write_new(path, data):
                raise VersionTaken(f"task {task!r} version {version} already exists in the store")
        except OSError as e:
            raise StoreError(f"could not write task {task!r} version {version}: {e}") from e
        try:
            write_sidecar(
                path, task=task, version=version, sha256=digest, size_bytes=len(data), metadata=meta
            )
        except Exception as e:
            # the checkpoint is ours (just created): a write that failed leaves nothing that a
            # start-up would register
            if not overwrite:
                self.delete_own(task, version, digest)
            if isinstance(e, OSError):
                raise StoreError(
                    f"could not write the sidecar of task {task!r} version {version}: {e}"
                ) from e
            raise
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
        return read_sidecar(self.path(task, version))

    def rewrite_sidecar(self, task: str, version: int, *, by: str) -> bool:
        """Rewrite a version's sidecar from its file (hash, size, header); False when the file is
        missing or is not a readable checkpoint."""
        path = self.path(task, version)
        if not path.is_file():
            return False
        try:
            meta = read_metadata(path)
        except (ValueError, OSError):  # CheckpointError is a ValueError
            return False
        write_sidecar(
            path,
            task=task,
            version=version,
            sha256=sha256_file(path),
            size_bytes=path.stat().st_size,
            metadata=meta,
            rewritten_by=by,
        )
        return True

    # ------------------------------------------------------------------ delete
    def delete_version(self, task: str, version: int) -> None:
        path = self.path(task, version)
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        d = path.parent
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()

    def delete_own(self, task: str, version: int, sha256: str) -> bool:
        """Remove a version this writer wrote (a publish that failed), only while the file is still
        the one with `sha256`: never another writer's file. True when it was removed."""
        path = self.path(task, version)
        try:
            if sha256_file(path) != sha256:
                return False
        except OSError:
            return False
        side = read_sidecar(path)
        path.unlink(missing_ok=True)
        if side is None or side.get("sha256") in (None, sha256):
            path.with_suffix(".json").unlink(missing_ok=True)
        try:
            fsync_dir(path.parent)
        except OSError:
            pass
        return True

    def delete_task(self, task: str) -> None:
        d = self.task_dir(task)
        if d.is_dir():
            shutil.rmtree(d)

    # ------------------------------------------------------------------ scan / cleanup
    def _task_dirs(self) -> Iterator[Path]:
        """The folders of the store that are task folders (valid task names), sorted."""
        if self.root.is_dir():
            yield from (
                d for d in sorted(self.root.iterdir()) if d.is_dir() and re.fullmatch(TASK_NAME_RE, d.name)
            )

    def scan(self, *, verify: bool = True) -> list[ScannedVersion]:
        """What is on disk: every `<task>/vNNNN.safetensors` under a valid task folder (temp files and
        anything else ignored). With `verify`, sha256 is computed from the file; otherwise it is the
        sidecar's (or '' when there is none)."""
        found: list[ScannedVersion] = []
        for d in self._task_dirs():
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

    def orphan_sidecars(self) -> list[Path]:
        """Sidecars whose checkpoint is not there."""
        found: list[Path] = []
        for d in self._task_dirs():
            for p in sorted(d.iterdir()):
                if _SIDECAR_FILE.match(p.name) and not p.with_suffix(".safetensors").exists():
                    found.append(p)
        return found

    def cleanup_temp(self, min_age_s: float = 60.0) -> list[Path]:
        """Remove temp files left by interrupted writes (older than `min_age_s`, so a write in
        progress in another process is left alone). Returns what was removed."""
        removed: list[Path] = []
        for p, age in temp_files(self.root):
            if age >= min_age_s:
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    continue
        return removed

    def quarantine(self, path: Path, label: str) -> str | None:
        """Move a bad file to `<root>/.quarantine/` (kept for a human to look at); its new path, or
        None when it was not there."""
        if not path.exists():
            return None
        qdir = self.root / QUARANTINE
        qdir.mkdir(parents=True, exist_ok=True)
        dest = qdir / f"{label}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.bad"
        shutil.move(str(path), dest)
        return str(dest)


def _write_new(path: Path, data: bytes) -> bool:
    """Write `path` whole (temp file, fsync, then a hard link: never a partial file) only if it does
    not exist yet: two writers racing for one version number cannot replace each other's file.
    False when it exists."""
    tmp = write_temp(path, data)
    try:
        try:
            os.link(tmp, path)  # atomic, and fails when the name is taken
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: check, then rename
            if path.exists():
                return False
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def temp_files(root: Path) -> Iterator[tuple[Path, float]]:
    """(path, age in seconds) of every temp file left by `atomic_write` under `root`."""
    if not root.is_dir():
        return
    now = time.time()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if TEMP_FILE.match(name):
                p = Path(dirpath) / name
                try:
                    yield p, now - p.stat().st_mtime
                except FileNotFoundError:
                    continue
