"""Uploaded dataset files: one file a content hash, `<root>/<sha256><suffix>`, written atomically.
The database (app.db.datasets) records who uploaded what; this holds only the bytes.

Uploads are streamed: `spool` copies the upload into a temp file (`.upload.XXXX.tmp`, which
`prompthub doctor` and the start-up remove when a crash leaves one) a chunk at a time, hashing as it
goes and stopping at the size limit; the caller parses the temp file, then `keep`s or `discard`s it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app.engine.checkpoint import atomic_write, fsync_dir, sha256_bytes, sha256_file

CHUNK_BYTES = 1 << 20


class UploadTooLarge(ValueError):
    """The upload is larger than the limit (nothing is kept)."""


@dataclass(frozen=True)
class StoredDataset:
    path: Path
    sha256: str
    size_bytes: int


class DatasetFiles:
    """Uploaded dataset files in a local folder (the default); app.store.s3_datasets.S3DatasetFiles keeps them
    in S3-compatible object storage behind the same methods."""

    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def local_copy(self, location: str, sha256: str | None = None) -> Path:
        """A local file holding the dataset recorded at `location` (here: the file itself)."""
        return Path(location)

    def check(self, location: str, sha256: str) -> str | None:
        """None when the dataset at `location` is there with `sha256`; else 'missing' or 'changed'."""
        p = Path(location)
        if not p.is_file():
            return "missing"
        return None if sha256_file(p) == sha256 else "changed"

    def put(self, data: bytes, suffix: str) -> StoredDataset:
        """Store `data` under its sha256 (an identical upload reuses the file)."""
        digest = sha256_bytes(data)
        path = (self.root / f"{digest}{suffix}").resolve()
        if not path.exists():
            atomic_write(path, data)
        return StoredDataset(path=path, sha256=digest, size_bytes=len(data))

    def spool(self, src: BinaryIO, suffix: str, max_bytes: int) -> StoredDataset:
        """Copy `src` into a temp file of the datasets folder, `CHUNK_BYTES` at a time; raises
        UploadTooLarge (and removes it) past `max_bytes`. The temp file keeps `suffix` in its name
        so that it can be parsed by its extension; `keep` or `discard` it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload.", suffix=f"{suffix}.tmp", dir=self.root)
        tmp = Path(name)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := src.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(f"upload too large: the limit is {max_bytes} bytes")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredDataset(path=tmp, sha256=h.hexdigest(), size_bytes=size)

    def keep(self, spooled: StoredDataset, suffix: str) -> StoredDataset:
        """Move a spooled upload to `<sha256><suffix>` (an identical file already there is reused)."""
        path = (self.root / f"{spooled.sha256}{suffix}").resolve()
        if path.exists():
            spooled.path.unlink(missing_ok=True)
        else:
            os.replace(spooled.path, path)
            fsync_dir(path.parent)
        return StoredDataset(path=path, sha256=spooled.sha256, size_bytes=spooled.size_bytes)

    def discard(self, spooled: StoredDataset) -> None:
        spooled.path.unlink(missing_ok=True)

    def delete(self, path: str | Path) -> bool:
        """Remove a dataset file (only one inside this folder); True when it was there."""
        p = Path(path).resolve()
        if p.parent != self.root.resolve():
            return False
        try:
            p.unlink()
        except FileNotFoundError:
            return False
        return True
