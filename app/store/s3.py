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

Endpoint, credentials and region come from the usual AWS settings, which boto3 reads itself
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ~/.aws/…).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlparse

from app.engine.checkpoint import (
    CheckpointError,
    atomic_write,
    parse_header,
    sha256_bytes,
    sha256_file,
)
from app.names import TASK_NAME_RE, validate_task_name
from app.store.datasets import DatasetFiles, StoredDataset
from app.store.prompts import (
    _SIDECAR_FILE,
    _VERSION_FILE,
    QUARANTINE,
    ScannedVersion,
    StoredFile,
    StoreError,
    StoreUnavailable,
    VersionTaken,
    temp_files,
    version_filename,
)
from app.store.sidecar import parse_sidecar, sidecar_bytes

DATASETS = "datasets"
_DATASET_NAME = re.compile(r"^[0-9a-f]{64}\.(jsonl|ndjson|json|csv|tsv)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CLIENT_LOCK = threading.Lock()  # boto3's default session is not safe to create clients from in parallel


def parse_store_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix` (prefix without slashes at its ends, may be '')."""
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc:
        raise ValueError(f"store_url: expected s3://bucket/prefix, got {url!r}")
    if not _BUCKET.match(u.netloc):
        raise ValueError(f"store_url: {u.netloc!r} is not a valid S3 bucket name")
    prefix = u.path.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"store_url: the prefix {prefix!r} has an empty, '.' or '..' part")
    return u.netloc, prefix


def make_client(**kw: Any) -> Any:
    """A boto3 S3 client: endpoint, credentials and region from the standard AWS settings; standard
    retry mode (backoff with jitter on throttling, 5xx and connection errors); path-style addressing
    when an endpoint is configured (MinIO, moto, Ceph), the default for AWS."""
    import boto3
    from botocore.config import Config

    custom = bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path" if custom else "auto"},
        # a checksum on every PUT (the SHA-256 we send), only when a response asks for it
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    if "config" in kw:
        config = config.merge(kw.pop("config"))
    return boto3.client("s3", config=config, **kw)


def _code(err: Exception) -> str:
    resp = getattr(err, "response", None) or {}
    return str((resp.get("Error") or {}).get("Code", ""))


def _status(err: Exception) -> int:
    resp = getattr(err, "response", None) or {}
    return int((resp.get("ResponseMetadata") or {}).get("HTTPStatusCode", 0) or 0)


def _not_found(err: Exception) -> bool:
    return _code(err) in ("NoSuchKey", "404", "NotFound") or _status(err) == 404


class S3Objects:
    """Keys relative to `prefix` in one bucket: put (new only, or replace), get, head, delete, list.
    Errors other than 'not there' are StoreError naming the object."""

    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self.requests = 0  # requests sent (tests and the doctor's report)

    @property
    def client(self) -> Any:
        if self._client is None:
            with _CLIENT_LOCK:
                if self._client is None:
                    self._client = make_client()
        return self._client

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def url(self, rel: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(rel)}" if rel else f"s3://{self.bucket}/{self.prefix}"

    def _call(self, op: str, rel: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        self.requests += 1
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kw)
        except ClientError as e:
            if _status(e) >= 500 and _code(e) != "NotImplemented":  # still failing after the retries
                raise StoreUnavailable(f"{self.url(rel)}: {op} failed: {e}") from e
            raise
        except BotoCoreError as e:  # connection refused, timeouts (after the retries)
            raise StoreUnavailable(f"{self.url(rel)}: {op} failed: {e}") from e

    def put(self, rel: str, body: bytes | BinaryIO, *, sha256: str | None = None, new: bool = False) -> bool:
        """Write the object whole. `new`: only if it does not exist (If-None-Match: *); False when it
        does. `sha256` (hex): sent as the PUT's checksum and kept as object metadata."""
        from botocore.exceptions import ClientError

        kw: dict[str, Any] = {"Key": self.key(rel), "Body": body}
        if sha256:
            kw["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
            kw["Metadata"] = {"sha256": sha256}
        if new:
            kw["IfNoneMatch"] = "*"
        try:
            self._call("put_object", rel, **kw)
            return True
        except ClientError as e:
            if new and (
                _code(e) in ("PreconditionFailed", "ConditionalRequestConflict") or _status(e) in (409, 412)
            ):
                return False
            if new and _code(e) == "NotImplemented":  # no conditional writes: check, then write
                if self.head(rel) is not None:
                    return False
                if hasattr(body, "seek"):
                    body.seek(0)
                return self.put(rel, body, sha256=sha256)
            raise StoreError(f"{self.url(rel)}: could not write: {e}") from e

    def get(self, rel: str) -> bytes | None:
        """The object's bytes, None when it is not there."""
        from botocore.exceptions import ClientError

        try:
            return self._call("get_object", rel, Key=self.key(rel))["Body"].read()
        except ClientError as e:
            if _not_found(e):
                return None
            raise StoreError(f"{self.url(rel)}: could not read: {e}") from e

    def download(self, rel: str, dest: BinaryIO) -> bool:
        """Stream the object into `dest`; False when it is not there."""
        from botocore.exceptions import ClientError

        try:
            body = self._call("get_object", rel, Key=self.key(rel))["Body"]
            for chunk in body.iter_chunks(1 << 20):
                dest.write(chunk)
            return True
        except ClientError as e:
            if _not_found(e):
                return False
            raise StoreError(f"{self.url(rel)}: could not read: {e}") from e

    def head(self, rel: str) -> dict[str, Any] | None:
        """{'size', 'sha256' (from the metadata, '' when none)}; None when it is not there."""
        from botocore.exceptions import ClientError

        try:
            r = self._call("head_object", rel, Key=self.key(rel))
        except ClientError as e:
            if _not_found(e):
                return None
            raise StoreError(f"{self.url(rel)}: could not read: {e}") from e
        return {"size": int(r.get("ContentLength", 0)), "sha256": (r.get("Metadata") or {}).get("sha256", "")}

    def delete(self, rel: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call("delete_object", rel, Key=self.key(rel))
        except ClientError as e:
            if not _not_found(e):
                raise StoreError(f"{self.url(rel)}: could not delete: {e}") from e

    def copy(self, src: str, dest: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call(
                "copy_object",
                dest,
                Key=self.key(dest),
                CopySource={"Bucket": self.bucket, "Key": self.key(src)},
            )
        except ClientError as e:
            raise StoreError(f"{self.url(src)}: could not copy to {dest}: {e}") from e

    def list(self, under: str = "") -> Iterator[tuple[str, int]]:
        """(relative key, size) of every object whose relative key starts with `under`."""
        from botocore.exceptions import ClientError

        token: str | None = None
        while True:
            kw: dict[str, Any] = {
                "Prefix": self.key(under) if under else (f"{self.prefix}/" if self.prefix else "")
            }
            if token:
                kw["ContinuationToken"] = token
            try:
                r = self._call("list_objects_v2", under, **kw)
            except ClientError as e:
                raise StoreError(f"{self.url(under)}: could not list: {e}") from e
            for obj in r.get("Contents") or []:
                yield self.rel(obj["Key"]), int(obj.get("Size", 0))
            if not r.get("IsTruncated"):
                return
            token = r.get("NextContinuationToken")


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
        dest = f"{QUARANTINE}/{label}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.bad"
        self.objects.copy(rel, dest)
        self.delete_version(task, version)
        return self.objects.url(dest)


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
        dest = f"{QUARANTINE}/{label}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.bad"
        self.objects.copy(rel, dest)
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
