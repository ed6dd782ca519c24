"""Uploaded dataset files: one file a content hash, `<root>/<sha256><suffix>`, written atomically.
The database (app.db.datasets) records who uploaded what; this holds only the bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.engine.checkpoint import atomic_write, sha256_bytes


@dataclass(frozen=True)
class StoredDataset:
    path: Path
    sha256: str
    size_bytes: int


class DatasetFiles:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes, suffix: str) -> StoredDataset:
        """Store `data` under its sha256 (an identical upload reuses the file)."""
        digest = sha256_bytes(data)
        path = (self.root / f"{digest}{suffix}").resolve()
        if not path.exists():
            atomic_write(path, data)
        return StoredDataset(path=path, sha256=digest, size_bytes=len(data))
