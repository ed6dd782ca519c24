"""The prompt store and the uploaded datasets in S3-compatible object storage
(`PROMPTHUB_STORE_URL=s3://bucket/prefix`), through boto3, with a node-local read cache.

Layout in the bucket (the local folder's layout under `prefix`, so `aws s3 sync prompts_store/
s3://bucket/prefix/` moves a local store there):

    <prefix>/<task>/v0001.safetensors   the checkpoint; object metadata sha256 = its sha256
    <prefix>/<task>/v0001.json          its sidecar (the same document as on disk)
    <prefix>/datasets/<sha256>.<ext>    an uploaded dataset
    <prefix>/.quarantine/…              files a repair set aside

An S3 PUT is atomic per object (readers see the old object or the whole new one), so there are no
temp files in the bucket. A version is created with a conditional PUT (`If-None-Match: *`): two
writers racing for one version number cannot replace each other's object (the loser gets 412 and
takes the next number); a server without conditional writes (501) falls back to a HEAD check. The
checkpoint's sha256 travels with the PUT (`ChecksumSHA256`: S3 refuses a body that does not match).
The checkpoint is written before its sidecar, both before the database row (app.versions).

Reads go through a node-local cache, `<store_cache_dir>/<task>/vNNNN-<sha256>.safetensors`: keyed by
the sha256 the database records, checked against it on every read (a cached file that does not
match is removed and fetched again), written atomically (temp file, then rename: never a partial
file), and bounded (`store_cache_bytes`: the least recently read files go first). A version served
once is served again from the cache without a request to the bucket.

Beside it: app.store.s3_objects (the client, conditional PUT, listing), app.store.read_cache (the
node cache) and app.store.s3_datasets (uploaded datasets).

Endpoint, credentials and region come from the usual AWS settings, which boto3 reads itself
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ~/.aws/…).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

from app.engine.checkpoint import (
    CheckpointError,
    parse_header,
    sha256_bytes,
)
from app.names import TASK_NAME_RE, validate_task_name
from app.store.prompts import (
    _SIDECAR_FILE,
    _VERSION_FILE,
    ScannedVersion,
    StoredFile,
    StoreError,
    VersionTaken,
    temp_files,
    version_filename,
)
from app.store.read_cache import ReadCache
from app.store.s3_objects import S3Objects
from app.store.sidecar import parse_sidecar, sidecar_bytes


class S3PromptStore:
    """The prompt store in S3-compatible object storage; the same interface as PromptStore."""

    kind = "s3"

    def __init__(self, objects: S3Objects, cache_dir: str | Path, cache_bytes: int = 10 << 30) -> None:
        self.objects = objects
        self.cache = ReadCache(Path(cache_dir) / "prompts", cache_bytes)
        self.cache_dir = Path(cache_dir)

    # ------------------------------------------------------------------ naming
    def rel_path(self, task: str, version: int) -> str:
        return f"{validate_task_name(task)}/{version_filename(version)}"

    def _sidecar_rel(self, task: str, version: int) -> str:
        return self.rel_path(task, version)[: -len(".safetensors")] + ".json"

    def path(self, task: str, version: int) -> PurePosixPath:
        """The object's key relative to the prefix (what the database records)."""
        return PurePosixPath(self.rel_path(task, version))

    def describe(self) -> str:
        return f"{self.objects.url()} (cache {self.cache_dir.resolve()})"

    def local_roots(self) -> list[Path]:
        return [self.cache_dir]

    def present(self) -> bool:
        return True  # the bucket answers or every call raises StoreError

    # ------------------------------------------------------------------ queries
    def exists(self, task: str, version: int) -> bool:
        return self.objects.head(self.rel_path(task, version)) is not None

    def versions(self, task: str) -> list[int]:
        found = []
        for rel, _ in self.objects.list(f"{validate_task_name(task)}/"):
            m = _VERSION_FILE.match(rel.rpartition("/")[2])
            if m and rel.count("/") == 1:
                found.append(int(m.group(1)))
        return sorted(found)

    def size_of(self, task: str, version: int) -> int:
        head = self.objects.head(self.rel_path(task, version))
        if head is None:
            raise FileNotFoundError(self.objects.url(self.rel_path(task, version)))
        return int(head["size"])

    def _get(self, task: str, version: int) -> bytes:
        data = self.objects.get(self.rel_path(task, version))
        if data is None:
            raise FileNotFoundError(self.objects.url(self.rel_path(task, version)))
        return data

    def hash_version(self, task: str, version: int) -> str:
        return sha256_bytes(self._get(task, version))

    def read_header(self, task: str, version: int) -> dict[str, Any]:
        return parse_header(self._get(task, version))

    def read_sidecar(self, task: str, version: int) -> dict[str, Any] | None:
        data = self.objects.get(self._sidecar_rel(task, version))
        return None if data is None else parse_sidecar(data)

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
        """PUT the checkpoint (only when the version is free, unless `overwrite`), then its sidecar;
        a sidecar that cannot be written removes the checkpoint again."""
        rel = self.rel_path(task, version)
        digest = sha256_bytes(data)
        if not self.objects.put(rel, data, sha256=digest, new=not overwrite):
            raise VersionTaken(f"task {task!r} version {version} already exists in the store")
        try:
            self._put_sidecar(task, version, digest, len(data), meta)
        except BaseException:
            if not overwrite:
                self.delete_own(task, version, digest)
            raise
        self.cache.put(self.cache.path(task, version, digest), data)  # the writer's node reads it next
        return StoredFile(path=PurePosixPath(rel), sha256=digest, size_bytes=len(data))  # type: ignore[arg-type]

    def _put_sidecar(
        self, task: str, version: int, digest: str, size: int, meta: dict[str, Any] | None, **extra: Any
    ) -> None:
        doc = sidecar_bytes(
            version_filename(version),
            task=task,
            version=version,
            sha256=digest,
            size_bytes=size,
            metadata=meta,
            **extra,
        )
        self.objects.put(self._sidecar_rel(task, version), doc)

    def read_version(self, task: str, version: int, expected_sha256: str | None) -> bytes:
        """The checkpoint bytes, from the cache when it holds them with `expected_sha256`, else from
        the bucket (then cached); StoreError when missing or when the sha256 differs."""
        cached = None
        if expected_sha256 is not None:
            cached = self.cache.path(task, version, expected_sha256)
            data = self.cache.get(cached, expected_sha256)
            if data is not None:
                return data
        rel = self.rel_path(task, version)
        data = self.objects.get(rel)
        if data is None:
            raise StoreError(
                f"task {task!r} version {version}: object {self.objects.url(rel)} is missing from the store"
            )
        if expected_sha256 is not None:
            if sha256_bytes(data) != expected_sha256:
                raise StoreError(
                    f"task {task!r} version {version}: {self.objects.url(rel)} does not match its recorded "
                    f"sha256 ({expected_sha256[:12]}…); the object is corrupt or was replaced"
                )
            assert cached is not None
            self.cache.put(cached, data)
        return data

    def rewrite_sidecar(self, task: str, version: int, *, by: str) -> bool:
        data = self.objects.get(self.rel_path(task, version))
        if data is None:
            return False
        try:
            meta = parse_header(data)
        except CheckpointError:
            return False
        self._put_sidecar(task, version, sha256_bytes(data), len(data), meta, rewritten_by=by)
        return True

    # ------------------------------------------------------------------ delete
    def delete_version(self, task: str, version: int) -> None:
        self.objects.delete(self.rel_path(task, version))
        self.objects.delete(self._sidecar_rel(task, version))

    def delete_own(self, task: str, version: int, sha256: str) -> bool:
        """Remove a version this writer wrote, only while the object is still the one with `sha256`."""
        rel = self.rel_path(task, version)
        try:
            head = self.objects.head(rel)
            if head is None:
                return False
            have = head["sha256"] or self.hash_version(task, version)
            if have != sha256:
                return False
            side = self.read_sidecar(task, version)
            self.objects.delete(rel)
            if side is None or side.get("sha256") in (None, sha256):
                self.objects.delete(self._sidecar_rel(task, version))
        except (StoreError, FileNotFoundError):
            return False
        return True

    def delete_task(self, task: str) -> None:
        # only version and sidecar objects: a task may be named "datasets", whose prefix the uploaded
        # datasets share (their names never look like a version's)
        for rel, _ in list(self.objects.list(f"{validate_task_name(task)}/")):
            name = rel.partition("/")[2]
            if "/" not in name and (_VERSION_FILE.match(name) or _SIDECAR_FILE.match(name)):
                self.objects.delete(rel)
        self.cache.drop_task(task)

    # ------------------------------------------------------------------ scan / cleanup
    def _listing(self) -> dict[str, dict[str, int]]:
        """task -> {file name: size} for every object directly under a valid task's prefix."""
        out: dict[str, dict[str, int]] = {}
        for rel, size in self.objects.list():
            task, sep, name = rel.partition("/")
            if sep and "/" not in name and re.fullmatch(TASK_NAME_RE, task):
                out.setdefault(task, {})[name] = size
        return out

    def scan(self, *, verify: bool = True) -> list[ScannedVersion]:
        """Every `<task>/vNNNN.safetensors` object. With `verify`, each is fetched and hashed and its
        sidecar read; otherwise one listing (sha256 '' and no sidecar: a start-up on a store of
        thousands of tasks does not fetch them)."""
        found: list[ScannedVersion] = []
        for task, files in sorted(self._listing().items()):
            for name, size in sorted(files.items()):
                m = _VERSION_FILE.match(name)
                if not m:
                    continue
                version = int(m.group(1))
                digest, sidecar = "", None
                if verify:
                    data = self.objects.get(f"{task}/{name}")
                    if data is None:  # deleted since the listing
                        continue
                    digest, size = sha256_bytes(data), len(data)
                    sidecar = self.read_sidecar(task, version)
                found.append(
                    ScannedVersion(
                        path=PurePosixPath(f"{task}/{name}"),  # type: ignore[arg-type]
                        sha256=digest,
                        size_bytes=size,
                        task=task,
                        version=version,
                        sidecar=sidecar,
                    )
                )
        return found

    def orphan_sidecars(self) -> list[PurePosixPath]:
        found = []
        for task, files in sorted(self._listing().items()):
            for name in sorted(files):
                if _SIDECAR_FILE.match(name) and name[: -len(".json")] + ".safetensors" not in files:
                    found.append(PurePosixPath(f"{task}/{name}"))
        return found

    def delete_sidecar_file(self, sidecar: PurePosixPath) -> None:
        self.objects.delete(str(sidecar))

    def cleanup_temp(self, min_age_s: float = 60.0) -> list[Path]:
        """Temp files of interrupted cache writes (the bucket has none: a PUT is atomic)."""
        removed = []
        for p, age in temp_files(self.cache_dir):
            if age >= min_age_s:
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    def quarantine_version(self, task: str, version: int, label: str) -> str | None:
        """Copy the object to `<prefix>/.quarantine/` (kept for a human), then delete it and its sidecar."""
        rel = self.rel_path(task, version)
        if self.objects.head(rel) is None:
            self.objects.delete(self._sidecar_rel(task, version))
            return None
        dest = self.objects.quarantine_copy(rel, label)
        self.delete_version(task, version)
        return self.objects.url(dest)
