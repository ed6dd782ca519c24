"""The S3 store backend against a real S3 HTTP endpoint (moto's standalone server, tests/conftest.py
`s3_server`): objects, sidecars and integrity, the node-local read cache, conditional version
creation, and the removal paths."""

from __future__ import annotations

import json
import threading
import time

import pytest

from app.engine.checkpoint import parse_header, sha256_bytes
from app.store import StoreError, VersionTaken
from app.store.read_cache import ReadCache
from app.store.s3 import S3PromptStore
from app.store.s3_datasets import S3DatasetFiles
from app.store.s3_objects import S3Objects, make_client, parse_store_url
from tests.helpers import free_port


def _store(url: str, cache_dir, **kw) -> S3PromptStore:
    bucket, prefix = parse_store_url(url)
    return S3PromptStore(S3Objects(bucket, prefix, kw.pop("client", None)), cache_dir, **kw)


def _key(url: str, rel: str) -> str:
    return f"{parse_store_url(url)[1]}/{rel}"


def test_parse_store_url():
    assert parse_store_url("s3://prompthub/a/b/") == ("prompthub", "a/b")
    assert parse_store_url("s3://prompthub") == ("prompthub", "")
    for bad in ("http://x/y", "s3://", "s3://UPPER/x", "s3://ok-bucket/a/../b"):
        with pytest.raises(ValueError, match="store_url"):
            parse_store_url(bad)


def test_write_read_and_layout(s3_server, s3_url, tmp_path, make_checkpoint):
    """A version is two objects in the local folder's layout under the prefix, the checkpoint with its
    sha256 as metadata and the same sidecar document as on disk; read back checked against it."""
    store = _store(s3_url, tmp_path / "cache")
    blob = make_checkpoint()
    st = store.write_version("sent", 1, blob, parse_header(blob))
    assert st.sha256 == sha256_bytes(blob) and st.size_bytes == len(blob)

    raw = s3_server.client()
    head = raw.head_object(Bucket=s3_server.bucket, Key=_key(s3_url, "sent/v0001.safetensors"))
    assert head["ContentLength"] == len(blob) and head["Metadata"]["sha256"] == st.sha256
    side = json.loads(
        raw.get_object(Bucket=s3_server.bucket, Key=_key(s3_url, "sent/v0001.json"))["Body"].read()
    )
    assert (
        side["sha256"] == st.sha256
        and side["size_bytes"] == len(blob)
        and side["file"] == "v0001.safetensors"
    )
    assert side["metadata"]["spec"]["task_type"] == "classification"

    fresh = _store(s3_url, tmp_path / "other-node")  # nothing cached: read from the bucket
    assert fresh.read_version("sent", 1, st.sha256) == blob
    assert fresh.read_version("sent", 1, None) == blob
    assert fresh.versions("sent") == [1] and fresh.exists("sent", 1) and not fresh.exists("sent", 2)
    assert fresh.size_of("sent", 1) == len(blob) and fresh.hash_version("sent", 1) == st.sha256
    assert fresh.read_header("sent", 1)["spec"]["task_type"] == "classification"
    assert fresh.read_sidecar("sent", 1)["sha256"] == st.sha256

    quick = fresh.scan(verify=False)  # one listing: no object fetched
    assert [(e.task, e.version, e.size_bytes, e.sha256) for e in quick] == [("sent", 1, len(blob), "")]
    deep = fresh.scan(verify=True)
    assert [(e.rel_path, e.sha256, e.sidecar["sha256"]) for e in deep] == [
        ("sent/v0001.safetensors", st.sha256, st.sha256)
    ]
    with pytest.raises(StoreError, match="missing from the store"):
        fresh.read_version("sent", 2, st.sha256)


def test_a_taken_version_is_never_replaced(s3_url, tmp_path, make_checkpoint):
    """Creating a version is a conditional PUT (If-None-Match: *): of two writers of one number, one
    wins and the other gets VersionTaken; the winner's bytes stay."""
    a, b = _store(s3_url, tmp_path / "a"), _store(s3_url, tmp_path / "b")
    blobs = [make_checkpoint(), make_checkpoint()]
    assert blobs[0] != blobs[1]
    results: list[object] = [None, None]
    barrier = threading.Barrier(2)

    def write(i, store):
        barrier.wait()
        try:
            results[i] = store.write_version("race", 1, blobs[i]).sha256
        except VersionTaken as e:
            results[i] = e

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if isinstance(r, str)]
    assert len(won) == 1 and sum(isinstance(r, VersionTaken) for r in results) == 1
    assert sha256_bytes(_store(s3_url, tmp_path / "c").read_version("race", 1, None)) == won[0]
    with pytest.raises(VersionTaken):
        a.write_version("race", 1, blobs[0])
    assert a.write_version("race", 1, blobs[1], overwrite=True).sha256 == sha256_bytes(blobs[1])


def test_a_corrupt_object_is_detected(s3_server, s3_url, tmp_path, make_checkpoint):
    """An object replaced in the bucket is refused on load (its sha256 differs from the recorded
    one); a damaged cached copy is dropped and fetched again."""
    store = _store(s3_url, tmp_path / "cache")
    blob = make_checkpoint()
    sha = store.write_version("sent", 1, blob).sha256
    raw = s3_server.client()
    raw.put_object(
        Bucket=s3_server.bucket, Key=_key(s3_url, "sent/v0001.safetensors"), Body=blob[:-4] + b"XXXX"
    )
    node = _store(s3_url, tmp_path / "new-node")
    with pytest.raises(StoreError, match="does not match its recorded sha256"):
        node.read_version("sent", 1, sha)
    assert not any((tmp_path / "new-node").rglob("*.safetensors"))  # nothing bad is cached

    # the writer's node cached the good bytes; damage that copy: dropped, refetched (now corrupt: refused)
    cached = store.cache.path("sent", 1, sha)
    assert cached.read_bytes() == blob
    cached.write_bytes(blob[: len(blob) // 2])  # a partial file
    with pytest.raises(StoreError, match="does not match"):
        store.read_version("sent", 1, sha)
    assert not cached.exists()
    # the object is put back: read, cached again
    raw.put_object(Bucket=s3_server.bucket, Key=_key(s3_url, "sent/v0001.safetensors"), Body=blob)
    assert store.read_version("sent", 1, sha) == blob and cached.read_bytes() == blob


def test_cache_hits_need_no_network(s3_url, tmp_path, make_checkpoint):
    """A version read once is read again from the node's cache: no request to the bucket, and it
    still loads when the endpoint is unreachable; an uncached one then fails as a StoreError."""
    writer = _store(s3_url, tmp_path / "writer")
    blob = make_checkpoint()
    sha = writer.write_version("sent", 1, blob).sha256
    sha2 = writer.write_version("sent", 2, make_checkpoint()).sha256

    node = _store(s3_url, tmp_path / "node")
    assert node.read_version("sent", 1, sha) == blob
    assert node.objects.requests == 1 and node.cache.misses == 1
    for _ in range(5):
        assert node.read_version("sent", 1, sha) == blob
    assert node.objects.requests == 1 and node.cache.hits == 5

    from botocore.config import Config

    dead = make_client(  # nothing listens there
        endpoint_url=f"http://127.0.0.1:{free_port()}", config=Config(retries={"max_attempts": 1})
    )
    offline = _store(s3_url, tmp_path / "node", client=dead)
    t0 = time.perf_counter()
    assert offline.read_version("sent", 1, sha) == blob
    assert time.perf_counter() - t0 < 0.5 and offline.objects.requests == 0
    with pytest.raises(StoreError, match="get_object failed"):
        offline.read_version("sent", 2, sha2)
    assert offline.objects.requests == 1


def test_cache_is_bounded_and_writes_whole_files(tmp_path):
    """Past `max_bytes` the least recently read files go; a write is a temp file then a rename."""
    cache = ReadCache(tmp_path / "c", max_bytes=3000)
    shas = []
    for v in range(1, 5):
        data = bytes([v]) * 1000
        sha = sha256_bytes(data)
        shas.append(sha)
        cache.put(cache.path("t", v, sha), data)
        time.sleep(0.01)
    present = sorted(p.name for p in (tmp_path / "c").rglob("*.safetensors"))
    assert len(present) == 3 and not (tmp_path / "c" / "t" / f"v0001-{shas[0]}.safetensors").exists()
    assert not [p for p in (tmp_path / "c").rglob("*") if p.name.endswith(".tmp")]
    # v2 read recently: a new file evicts v3 (the least recently read), not v2
    assert cache.get(cache.path("t", 2, shas[1]), shas[1]) == bytes([2]) * 1000
    data = b"\x05" * 1000
    cache.put(cache.path("t", 5, sha256_bytes(data)), data)
    assert cache.path("t", 2, shas[1]).exists() and not cache.path("t", 3, shas[2]).exists()
    with pytest.raises(ValueError, match="sha256"):
        cache.path("t", 1, "../../etc/passwd")


def test_delete_own_and_delete_task(s3_url, tmp_path, make_checkpoint):
    """delete_own removes only the writer's own object (checked by its sha256); delete_task removes
    the task's objects and its cached copies, and nothing of another task."""
    store = _store(s3_url, tmp_path / "cache")
    mine = store.write_version("a", 1, make_checkpoint()).sha256
    assert not store.delete_own("a", 1, "0" * 64) and store.exists("a", 1)
    assert store.delete_own("a", 1, mine) and not store.exists("a", 1)
    assert store.read_sidecar("a", 1) is None
    store.write_version("a", 1, make_checkpoint())
    store.write_version("a", 2, make_checkpoint())
    store.write_version("ab", 1, make_checkpoint())  # a prefix of another task's name
    store.delete_task("a")
    assert store.versions("a") == [] and store.versions("ab") == [1]
    assert not (tmp_path / "cache" / "prompts" / "a").exists()
    # a task named "datasets" shares its prefix with the uploaded datasets: they survive its deletion
    files = S3DatasetFiles(store.objects, tmp_path / "cache")
    kept = files.put(b'{"text": "a", "label": "x"}\n', ".jsonl")
    store.write_version("datasets", 1, make_checkpoint())
    store.delete_task("datasets")
    assert store.versions("datasets") == [] and files.check(kept.path, kept.sha256) is None


def test_orphan_sidecars_and_quarantine(s3_server, s3_url, tmp_path, make_checkpoint):
    store = _store(s3_url, tmp_path / "cache")
    store.write_version("a", 1, make_checkpoint())
    store.write_version("a", 2, make_checkpoint())
    raw = s3_server.client()
    raw.delete_object(Bucket=s3_server.bucket, Key=_key(s3_url, "a/v0002.safetensors"))
    assert [str(p) for p in store.orphan_sidecars()] == ["a/v0002.json"]
    store.delete_sidecar_file(store.orphan_sidecars()[0])
    assert store.orphan_sidecars() == []
    dest = store.quarantine_version("a", 1, "a.v0001.safetensors")
    assert dest.startswith(f"{s3_url}/.quarantine/a.v0001.safetensors.")
    assert store.versions("a") == [] and store.read_sidecar("a", 1) is None
    assert [e.task for e in store.scan()] == []  # the quarantine is not a task


def test_dataset_files_in_the_bucket(s3_server, s3_url, tmp_path):
    """Uploaded datasets: spooled on the node, stored as `<prefix>/datasets/<sha256><ext>`, fetched
    and verified on another node, checked, deleted only inside the store's datasets."""
    import io

    bucket, prefix = parse_store_url(s3_url)
    files = S3DatasetFiles(S3Objects(bucket, prefix), tmp_path / "node-a")
    data = b'{"text": "a", "label": "x"}\n' * 10
    spooled = files.spool(io.BytesIO(data), ".jsonl", 1 << 20)
    stored = files.keep(spooled, ".jsonl")
    sha = sha256_bytes(data)
    assert stored.path == f"{s3_url}/datasets/{sha}.jsonl" and stored.sha256 == sha
    assert not spooled.path.exists()

    other = S3DatasetFiles(S3Objects(bucket, prefix), tmp_path / "node-b")
    local = other.local_copy(stored.path, sha)
    assert local.read_bytes() == data and local.parent == tmp_path / "node-b" / "datasets"
    assert other.check(stored.path, sha) is None and other.check(stored.path, "0" * 64) == "changed"
    assert not other.delete(f"s3://{bucket}/{prefix}/sent/v0001.safetensors")  # not a dataset key
    assert other.delete(stored.path) and other.check(stored.path, sha) == "missing"
    with pytest.raises(FileNotFoundError):
        S3DatasetFiles(S3Objects(bucket, prefix), tmp_path / "node-c").local_copy(stored.path, sha)
