"""The service on the S3 store backend (PROMPTHUB_STORE_URL against moto_server over HTTP): publish
and serve through the real app, datasets uploaded to the bucket and trained on by a worker on another
node, the publish order (object and sidecar before the row), a crash between them, and a new node
with an empty cache (and a local store with an empty folder) that keeps every registry row."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sqlalchemy import event

from app import versions
from app.db import datasets as db_datasets
from app.db import tasks as db_tasks
from app.db.models import TaskVersion
from app.db.session import get_sessionmaker
from app.store.s3_objects import parse_store_url
from tests.helpers import local_client, publish_task, session_for, store_for

RECORDS = [
    {"text": "a wonderful, moving film", "label": "pos"},
    {"text": "great acting and a fine story", "label": "pos"},
    {"text": "I loved every minute", "label": "pos"},
    {"text": "brilliant", "label": "pos"},
    {"text": "dull and far too long", "label": "neg"},
    {"text": "a boring mess", "label": "neg"},
    {"text": "I hated it", "label": "neg"},
    {"text": "terrible", "label": "neg"},
]


def _keys(s3_server, url: str) -> list[str]:
    _, prefix = parse_store_url(url)
    r = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/")
    return sorted(o["Key"][len(prefix) + 1 :] for o in r.get("Contents") or [])


def _rows(settings) -> dict[str, tuple[int | None, list[tuple[int, str]]]]:
    with session_for(settings) as s:
        return {
            t.name: (t.active_version, [(v.version, v.sha256) for v in db_tasks.get_versions(s, t.name)])
            for t in db_tasks.list_tasks(s)
        }


@pytest.fixture
def s3_settings(settings_factory, s3_url, tmp_path):
    """Settings of one node: the shared bucket prefix, this node's own (empty) cache, and local
    folders that must stay unused."""

    def make(node: str = "a", **kw):
        return settings_factory(
            store_url=s3_url,
            store_cache_dir=str(tmp_path / f"cache-{node}"),
            store_dir=str(tmp_path / f"unused-store-{node}"),
            data_dir=str(tmp_path / f"unused-data-{node}"),
            **kw,
        )

    return make


def test_publish_writes_object_and_sidecar_before_the_row_then_serves(s3_server, s3_settings, hub_factory):
    """At the moment a version's row is inserted its object and sidecar are already in the bucket;
    the app then serves it from there (and from the node cache after)."""
    from app.main import create_app

    settings = s3_settings()
    seen: list[tuple[str, int, list[str]]] = []

    def check(_mapper, _conn, row):
        seen.append((row.task_name, row.version, _keys(s3_server, settings.store_url)))

    hub = hub_factory(settings)
    event.listen(TaskVersion, "before_insert", check)
    try:
        assert publish_task(settings, hub.backbone, "sent") == 1
    finally:
        event.remove(TaskVersion, "before_insert", check)
    assert seen == [("sent", 1, ["sent/v0001.json", "sent/v0001.safetensors"])]
    assert not Path(settings.store_dir).exists()

    with local_client(create_app(settings, hub)) as c:
        r = c.post("/predict/sent", json={"inputs": ["a superb show", "dreadful"]})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1 and len(r.json()["predictions"]) == 2
        assert c.get("/tasks/sent").json()["active_version"] == 1
    cached = list(Path(settings.store_cache_dir).rglob("v0001-*.safetensors"))
    assert len(cached) == 1


def test_a_refused_publish_leaves_no_object(s3_server, s3_settings, hub_factory):
    """The database refuses the row (the task exists with another task type): the object written for
    it is removed again, so no object lingers for a start-up to register."""
    from app.db.errors import Conflict
    from app.engine.checkpoint import checkpoint_bytes
    from tests.helpers import make_serving_task

    settings = s3_settings()
    hub = hub_factory(settings)
    publish_task(settings, hub.backbone, "sent")
    blob = checkpoint_bytes(make_serving_task(hub.backbone, "regression"), hub.backbone, {})
    with session_for(settings) as s, pytest.raises(Conflict):
        versions.publish(s, store_for(settings), "sent", blob, source="test")
    assert _keys(s3_server, settings.store_url) == ["sent/v0001.json", "sent/v0001.safetensors"]


def test_crash_between_object_and_row_is_registered_at_start(s3_settings, hub_factory, make_checkpoint):
    """A writer died after its object and sidecar, before the row: the next start-up registers the
    version (and activates it: the task had none), and it is served."""
    from app.main import create_app

    settings = s3_settings()
    hub = hub_factory(settings)
    store_for(settings).write_version("orphan", 1, make_checkpoint())
    assert _rows(settings) == {}
    with local_client(create_app(settings, hub)) as c:  # the lifespan runs the start-up sync
        assert _rows(settings)["orphan"][0] == 1
        r = c.post("/predict/orphan", json={"inputs": ["hello"]})
        assert r.status_code == 200 and r.json()["version"] == 1, r.text


def test_datasets_go_to_the_bucket_and_train_on_another_node(
    s3_server, s3_settings, hub_factory, tiny_backbone
):
    """POST /datasets on node A stores the file in the bucket (no local data folder); a worker on
    node B (empty cache) fetches it, trains, publishes to the bucket; node A serves the result."""
    from app.jobs.worker import Worker
    from app.main import create_app

    a, b = s3_settings("a"), s3_settings("b")
    data = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()
    with local_client(create_app(a, hub_factory(a))) as c:
        r = c.post(
            "/datasets",
            files={"file": ("reviews.jsonl", io.BytesIO(data))},
            data={"task_type": "classification"},
        )
        assert r.status_code == 201, r.text
        ds = r.json()
        with session_for(a) as s:
            location = db_datasets.get_dataset(s, ds["id"]).path
        assert location.startswith(f"{a.store_url}/datasets/") and location.endswith(".jsonl")
        assert [k for k in _keys(s3_server, a.store_url) if k.startswith("datasets/")] == [
            location[len(a.store_url) + 1 :]
        ]
        assert not Path(a.data_dir).exists()
        preview = c.get(f"/ui/api/datasets/{ds['id']}/preview")
        assert preview.status_code == 200 and preview.json()["rows"] == 8, preview.text

        body = {
            "task": "reviews",
            "task_type": "classification",
            "train": {"dataset_id": ds["id"]},
            "hyperparameters": {"prefix_length": 4, "epochs": 2, "batch_size": 4, "max_length": 32},
        }
        r = c.post("/train", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        worker = Worker(b, worker_id="node-b", backbone=tiny_backbone)
        assert worker.run_once()
        j = c.get(f"/jobs/{job_id}").json()
        assert j["state"] == "succeeded", j
        assert list((Path(b.store_cache_dir) / "datasets").glob("*.jsonl"))  # node B's copy
        assert "reviews/v0001.safetensors" in _keys(s3_server, a.store_url)
        r = c.post("/predict/reviews", json={"inputs": ["a fine film"]})
        assert r.status_code == 200 and r.json()["version"] == 1, r.text

        assert c.delete(f"/datasets/{ds['id']}").status_code == 200
        assert not [k for k in _keys(s3_server, a.store_url) if k.startswith("datasets/")]


@pytest.mark.postgres
def test_a_new_empty_node_keeps_every_row_and_serves(s3_server, s3_settings, hub_factory, pg_url):
    """Node A published (beta rolled back to v1). Node B starts with an empty cache and an empty
    local folder on the same PostgreSQL and bucket: its start-up and `prompthub doctor --repair`
    delete nothing and change no active version, and it serves every task from the bucket."""
    from app.main import create_app
    from app.ops.doctor import run_doctor

    a = s3_settings("a", database_url=pg_url)
    hub_a = hub_factory(a)
    publish_task(a, hub_a.backbone, "alpha")
    publish_task(a, hub_a.backbone, "beta")
    publish_task(a, hub_a.backbone, "beta", seed=1)
    with session_for(a) as s:
        versions.activate(s, "beta", 1)
    before = _rows(a)

    b = s3_settings("b", database_url=pg_url)
    Path(b.store_dir).mkdir()  # an empty local folder too
    assert not Path(b.store_cache_dir).exists()
    with local_client(create_app(b, hub_factory(b))) as c:
        assert _rows(b) == before
        report = run_doctor(b, repair=True, temp_age_s=0)
        assert report.ok, report.text()
        assert report.repairs == [] and _rows(b) == before
        for name, want in (("alpha", 1), ("beta", 1)):
            r = c.post(f"/predict/{name}", json={"inputs": ["hello"]})
            assert r.status_code == 200 and r.json()["version"] == want, r.text
    assert len(list(Path(b.store_cache_dir).rglob("*.safetensors"))) == 2


def test_local_store_with_an_empty_folder_keeps_every_row(settings_factory, hub_factory, tmp_path):
    """The local backend on a node whose store folder is empty (a new node, an unmounted volume):
    neither the start-up nor `prompthub doctor --repair` drops a row."""
    from app.main import _prepare_database
    from app.ops.doctor import run_doctor

    full = settings_factory()
    hub = hub_factory(full)
    publish_task(full, hub.backbone, "alpha")
    publish_task(full, hub.backbone, "beta")
    before = _rows(full)
    empty = settings_factory(store_dir=str(tmp_path / "empty-store"))
    Path(empty.store_dir).mkdir()
    _prepare_database(empty, get_sessionmaker(empty.database_url), store_for(empty))
    assert _rows(empty) == before
    report = run_doctor(empty, repair=True)
    assert _rows(empty) == before
    missing = [f for f in report.found if f.kind == "missing_file"]
    assert len(missing) == 2 and all(f.repair is None for f in missing)
    assert "holds no version at all: rows are not dropped" in missing[0].message


def test_doctor_on_s3_quarantines_a_corrupt_object_and_registers_an_orphan(
    s3_server, s3_settings, hub_factory, make_checkpoint
):
    """`prompthub doctor --repair` against the bucket: an object whose bytes changed is moved to
    `<prefix>/.quarantine/` and its row dropped; a valid object without a row is registered."""
    from app.ops.doctor import run_doctor

    settings = s3_settings()
    hub = hub_factory(settings)
    publish_task(settings, hub.backbone, "alpha")
    publish_task(settings, hub.backbone, "alpha", seed=1)
    store_for(settings).write_version("orphan", 1, make_checkpoint())
    _, prefix = parse_store_url(settings.store_url)
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=f"{prefix}/alpha/v0002.safetensors", Body=make_checkpoint()
    )
    report = run_doctor(settings, repair=True, temp_age_s=0)
    kinds = sorted(f.kind for f in report.found if f.problem)
    assert kinds == ["orphan_file", "sha_mismatch"], report.text()
    assert report.ok, report.text()
    rows = _rows(settings)
    assert [v for v, _ in rows["alpha"][1]] == [1] and rows["alpha"][0] == 1
    assert rows["orphan"][0] == 1
    keys = _keys(s3_server, settings.store_url)
    assert "alpha/v0002.safetensors" not in keys
    assert [k for k in keys if k.startswith(".quarantine/alpha.v0002.safetensors.")]


def test_an_unreachable_bucket_is_a_503_and_cached_versions_still_serve(s3_settings, tiny_backbone):
    """The hub reads through a store whose endpoint goes away: a version this node has cached is
    still served; one it has not is a 503 with Retry-After (not a 500), and served once it is back."""
    from botocore.config import Config

    from app.db.session import run_migrations
    from app.main import create_app, make_resolver
    from app.serving.hub import Hub
    from app.store.s3 import S3PromptStore
    from app.store.s3_objects import S3Objects, make_client
    from tests.helpers import free_port

    settings = s3_settings()
    run_migrations(settings.database_url)
    bucket, prefix = parse_store_url(settings.store_url)
    objects = S3Objects(bucket, prefix)
    store = S3PromptStore(objects, Path(settings.store_cache_dir) / "reader")
    writer = store_for(settings)
    publish_task(settings, tiny_backbone, "cached")
    publish_task(settings, tiny_backbone, "uncached")
    live = objects.client
    dead = make_client(
        endpoint_url=f"http://127.0.0.1:{free_port()}", config=Config(retries={"max_attempts": 1})
    )
    hub = Hub(
        settings,
        resolve=make_resolver(get_sessionmaker(settings.database_url)),
        read=store.read_version,
        backbones=[tiny_backbone],
    )
    try:
        with local_client(create_app(settings, hub)) as c:
            assert c.post("/predict/cached", json={"inputs": ["x"]}).status_code == 200
            hub.cache.discard_task("cached")  # the device cache too: the read must go to the store
            objects._client = dead
            r = c.post("/predict/cached", json={"inputs": ["x"]})
            assert r.status_code == 200, r.text  # from the node cache, no request
            r = c.post("/predict/uncached", json={"inputs": ["x"]})
            assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
            assert "cannot be reached" in r.json()["detail"]
            objects._client = live
            assert c.post("/predict/uncached", json={"inputs": ["x"]}).status_code == 200
    finally:
        hub.close()
    assert writer.versions("uncached") == [1]


def test_startup_with_the_bucket_unreachable_keeps_rows_and_starts(s3_settings, hub_factory, caplog):
    """A node starting while the endpoint is down: the start-up sync of versions is skipped with an
    error (no row touched), instead of the server failing to start."""
    from botocore.config import Config

    from app.ops.maintenance import startup_sync
    from app.store.s3 import S3PromptStore
    from app.store.s3_objects import S3Objects, make_client
    from tests.helpers import free_port

    settings = s3_settings()
    hub = hub_factory(settings)
    publish_task(settings, hub.backbone, "alpha")
    before = _rows(settings)
    bucket, prefix = parse_store_url(settings.store_url)
    dead = make_client(
        endpoint_url=f"http://127.0.0.1:{free_port()}", config=Config(retries={"max_attempts": 1})
    )
    down = S3PromptStore(S3Objects(bucket, prefix, dead), settings.store_cache_dir)
    with session_for(settings) as s, caplog.at_level("ERROR"):
        assert startup_sync(s, down) == []
    assert "cannot be reached; the start-up sync of versions is skipped" in caplog.text
    assert _rows(settings) == before
