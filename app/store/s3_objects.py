"""S3-compatible object storage as the stores use it: the store URL, the boto3 client (standard
retries, path-style addressing for a custom endpoint) and S3Objects, keys under one prefix of one
bucket with the conditional PUT (`If-None-Match: *`, a HEAD check where the server has none) and
the paginated listing."""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import urlparse

from app.store.prompts import QUARANTINE, StoreError, StoreUnavailable

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

    def quarantine_copy(self, rel: str, label: str) -> str:
        """Copy the object to `<prefix>/.quarantine/` (kept for a human); returns the copy's
        relative key. The caller deletes the original."""
        dest = f"{QUARANTINE}/{label}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.bad"
        self.copy(rel, dest)
        return dest
