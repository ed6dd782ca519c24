"""The node-local read cache of an object store: verified, bounded copies keyed by sha256."""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

from app.engine.checkpoint import atomic_write, sha256_bytes
from app.names import validate_task_name


class ReadCache:
    """Verified, bounded node-local copies of store objects, keyed by their sha256."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes held, as this process knows it (None: not counted yet)

    def path(self, task: str, version: int, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256: expected 64 hex digits")
        return self.root / validate_task_name(task) / f"v{version:04d}-{sha256}.safetensors"

    def get(self, path: Path, sha256: str) -> bytes | None:
        try:
            data = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        if sha256_bytes(data) != sha256:  # damaged on this node: drop it, fetch again
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        try:
            os.utime(path)  # recently read: evicted last
        except OSError:
            pass
        return data

    def put(self, path: Path, data: bytes) -> None:
        try:
            atomic_write(path, data)
        except OSError:  # a full or read-only cache only costs a refetch
            return
        with self._lock:
            self._total = None if self._total is None else self._total + len(data)
            over = self._total is None or self._total > self.max_bytes
        if over:  # the folder is walked on the first write and when over the bound, not every time
            self.evict(keep=path)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently read files until the cache holds at most `max_bytes`."""
        with self._lock:
            files = []
            for p in self.root.rglob("*"):
                if p.is_file() and not p.name.startswith("."):
                    try:
                        st = p.stat()
                    except OSError:
                        continue
                    files.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in files)
            removed = []
            for _, size, p in sorted(files, key=lambda f: f[0]):
                if total <= self.max_bytes:
                    break
                if p == keep:
                    continue
                p.unlink(missing_ok=True)
                total -= size
                removed.append(p)
            self._total = total
            return removed

    def drop_task(self, task: str) -> None:
        shutil.rmtree(self.root / validate_task_name(task), ignore_errors=True)
