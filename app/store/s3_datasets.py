"""Uploaded datasets in S3-compatible object storage, under `<prefix>/datasets/<sha256>.<ext>`."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

from app.engine.checkpoint import sha256_bytes, sha256_file
from app.store.datasets import DatasetFiles, StoredDataset
from app.store.prompts import StoreError
from app.store.s3_objects import S3Objects

DATASETS = "datasets"
_DATASET_NAME = re.compile(r"^[0-9a-f]{64}\.(jsonl|ndjson|json|csv|tsv)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CLIENT_LOCK = threading.Lock()  # boto3's default session is not safe to create clients from in parallel


class S3DatasetFiles(DatasetFiles):
    """Uploaded datasets under `<prefix>/datasets/`; spooled and cached in `<cache>/datasets/`.
    The database records a dataset's location as its `s3://bucket/key` URL."""

    kind = "s3"

    def __init__(self, objects: S3Objects, cache_dir: str | Path) -> None:
        super().__init__(Path(cache_dir) / DATASETS)
        self.objects = objects

    def _rel_of(self, location: str) -> str | None:
        """The key (relative to the prefix) of a dataset URL of this bucket and prefix, else None."""
        u = urlparse(str(location))
        key = u.path.lstrip("/")
        if u.scheme != "s3" or u.netloc != self.objects.bucket:
            return None
        rel = (
            self.objects.rel(key)
            if (not self.objects.prefix or key.startswith(self.objects.prefix + "/"))
            else None
        )
        if (
            rel is None
            or not rel.startswith(f"{DATASETS}/")
            or not _DATASET_NAME.match(rel[len(DATASETS) + 1 :])
        ):
            return None
        return rel

    def put(self, data: bytes, suffix: str) -> StoredDataset:
        digest = sha256_bytes(data)
        rel = f"{DATASETS}/{digest}{suffix}"
        self.objects.put(rel, data, sha256=digest, new=True)  # False: the same bytes are there
        return StoredDataset(path=self.objects.url(rel), sha256=digest, size_bytes=len(data))  # type: ignore[arg-type]

    def keep(self, spooled: StoredDataset, suffix: str) -> StoredDataset:
        """Upload a spooled file to `<prefix>/datasets/<sha256><suffix>` (an identical object is
        reused), then keep the spooled file as this node's cached copy."""
        rel = f"{DATASETS}/{spooled.sha256}{suffix}"
        with open(spooled.path, "rb") as f:
            self.objects.put(rel, f, sha256=spooled.sha256, new=True)
        cached = self.root / f"{spooled.sha256}{suffix}"
        try:
            os.replace(spooled.path, cached)
        except OSError:
            Path(spooled.path).unlink(missing_ok=True)
        return StoredDataset(path=self.objects.url(rel), sha256=spooled.sha256, size_bytes=spooled.size_bytes)  # type: ignore[arg-type]

    def local_copy(self, location: str, sha256: str | None = None) -> Path:
        """This node's verified copy of the dataset at `location` (fetched when absent or damaged);
        FileNotFoundError when the object is not there, StoreError when it does not match `sha256`."""
        rel = self._rel_of(location)
        if rel is None:
            return Path(location)  # a dataset uploaded to a local folder before the move to S3
        cached = self.root / rel.rpartition("/")[2]
        if cached.is_file() and (sha256 is None or sha256_file(cached) == sha256):
            return cached
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                if not self.objects.download(rel, f):
                    raise FileNotFoundError(location)
                f.flush()
                os.fsync(f.fileno())
            if sha256 is not None and sha256_file(tmp) != sha256:
                raise StoreError(
                    f"dataset {location} does not match its recorded sha256 (changed or corrupt)"
                )
            os.replace(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)
        return cached

    def check(self, location: str, sha256: str) -> str | None:
        rel = self._rel_of(location)
        if rel is None:
            return super().check(location, sha256)
        data = self.objects.get(rel)
        if data is None:
            return "missing"
        return None if sha256_bytes(data) == sha256 else "changed"

    def quarantine(self, location: str, label: str) -> str | None:
        rel = self._rel_of(location)
        if rel is None or self.objects.head(rel) is None:
            return None
        dest = self.objects.quarantine_copy(rel, label)
        self.objects.delete(rel)
        (self.root / rel.rpartition("/")[2]).unlink(missing_ok=True)
        return self.objects.url(dest)

    def delete(self, path: str | Path) -> bool:
        """Remove a dataset object of this store (only `<prefix>/datasets/<sha256>.<ext>`)."""
        rel = self._rel_of(str(path))
        if rel is None:
            return super().delete(path)
        if self.objects.head(rel) is None:
            return False
        self.objects.delete(rel)
        (self.root / rel.rpartition("/")[2]).unlink(missing_ok=True)
        return True
