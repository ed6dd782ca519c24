"""Serving replicas on one PostgreSQL database (issue 13, item 3).

- database queries per prediction, counted on the engine: 1 without the version cache (SQLite,
  or PostgreSQL with PROMPTHUB_VERSION_CACHE_TTL_S=0: the behaviour before), 0 on a warm cache;
- a replica's own activation is served by its next prediction;
- replicas starting together: migrations run once, the start-up store sync registers each file once;
- two real server processes: a version activated on A is served by B within 1 s.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event

from tests.helpers import (
    local_client,
    publish_task,
    seed_store,
    session_for,
    start_server,
    stop_server,
    wait_ready,
)


@contextmanager
def count_queries(url: str):
    """Every statement sent through the app's engine for `url` while inside."""
    from app.db.session import get_sessionmaker

    engine = get_sessionmaker(url).kw["bind"]
    seen: list[str] = []

    def on(_conn, _cursor, statement, *_a):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", on)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on)


def _queries_per_prediction(settings, hub_factory, tiny_backbone, n: int = 20) -> tuple[list[str], int]:
    from app.main import create_app

    hub = hub_factory(settings)
    publish_task(settings, tiny_backbone, "sentiment", seed=1)
    app = create_app(settings, hub)
    with local_client(app) as c:
        listener = getattr(app.state, "version_listener", None)
        if listener is not None:  # LISTEN forgets what was cached before it: warm up after it
            assert listener.connected.wait(10), "the version listener did not connect"
        assert c.post("/predict/sentiment", json={"inputs": ["warm up"]}).status_code == 200
        with count_queries(settings.database_url) as seen:
            for i in range(n):
                r = c.post("/predict/sentiment", json={"inputs": [f"text {i}"]})
                assert r.status_code == 200 and r.json()["version"] == 1
    return seen, n


@pytest.mark.postgres
def test_a_warm_replica_asks_the_database_nothing_per_prediction(
    pg_url, settings_factory, hub_factory, tiny_backbone
):
    settings = settings_factory(database_url=pg_url, version_cache_ttl_s=60)
    seen, _ = _queries_per_prediction(settings, hub_factory, tiny_backbone)
    assert seen == []


@pytest.mark.postgres
def test_without_the_cache_every_prediction_asks_once(pg_url, settings_factory, hub_factory, tiny_backbone):
    """The behaviour before (and PROMPTHUB_VERSION_CACHE_TTL_S=0): one lookup a prediction."""
    settings = settings_factory(database_url=pg_url, version_cache_ttl_s=0)
    seen, n = _queries_per_prediction(settings, hub_factory, tiny_backbone)
    assert len(seen) == n and all("FROM tasks" in q for q in seen)


def test_sqlite_keeps_one_lookup_a_prediction(sqlite_url, settings_factory, hub_factory, tiny_backbone):
    settings = settings_factory(database_url=sqlite_url)
    seen, n = _queries_per_prediction(settings, hub_factory, tiny_backbone)
    assert len(seen) == n


@pytest.mark.postgres
def test_a_replica_serves_its_own_activation_at_once(pg_url, settings_factory, hub_factory, tiny_backbone):
    from app.main import create_app

    settings = settings_factory(database_url=pg_url, version_cache_ttl_s=60)
    hub = hub_factory(settings)
    publish_task(settings, tiny_backbone, "sentiment", seed=1)
    publish_task(settings, tiny_backbone, "sentiment", seed=2)
    with local_client(create_app(settings, hub)) as c:
        assert c.post("/predict/sentiment", json={"inputs": ["x"]}).json()["version"] == 2
        assert c.post("/tasks/sentiment/versions/1/activate").status_code == 200
        assert c.post("/predict/sentiment", json={"inputs": ["x"]}).json()["version"] == 1
        assert c.delete("/tasks/sentiment").status_code == 200
        assert c.post("/predict/sentiment", json={"inputs": ["x"]}).status_code == 404


@pytest.fixture
def fresh_pg():
    """An empty PostgreSQL database (not migrated), dropped afterwards."""
    import psycopg

    from app.db.session import dispose_engines
    from tests.conftest import PG_HOST, PG_PORT, PG_USER

    name = f"prompthub_replicas_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)
    except Exception as e:
        pytest.skip(f"PostgreSQL is not reachable: {e}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        dispose_engines()
        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
        ) as a:
            a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_replicas_starting_together_migrate_once_and_sync_each_file_once(
    fresh_pg, tmp_path, settings_factory, tiny_backbone_dir
):
    """Three `prompthub migrate` processes at once on an empty database all succeed (the advisory
    lock in alembic/env.py); then four start-up syncs at once (threads: Alembic's own state is
    per process) on files no row lists yet register each file exactly once and fail nowhere."""
    from app.db.session import REPO_ROOT, current_revision, get_sessionmaker
    from app.db.tasks import all_versions, list_tasks
    from app.main import sync_at_start
    from app.store import PromptStore

    env = {"PROMPTHUB_DATABASE_URL": fresh_pg, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "migrate"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    head = current_revision(fresh_pg)
    assert head and all(head in o for o in outs)

    settings = settings_factory(database_url=fresh_pg)
    seed_store(settings, tiny_backbone_dir, ["a", "b", "c", "d"])
    errors: list[BaseException] = []

    def start() -> None:
        try:
            sync_at_start(settings, get_sessionmaker(fresh_pg), PromptStore(settings.store_dir))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with session_for(settings) as s:
        assert sorted((v.task_name, v.version) for v in all_versions(s)) == [(n, 1) for n in "abcd"]
        assert {t.name: t.active_version for t in list_tasks(s)} == dict.fromkeys("abcd", 1)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_version_activated_on_one_replica_is_served_by_the_other_within_1s(
    pg_url, tmp_path: Path, settings_factory, tiny_backbone_dir
):
    """Two `prompthub serve --no-worker` processes on one database and store (the default TTL):
    B learns of A's activation through NOTIFY."""
    from app.engine.backbone import load_backbone
    from tests.helpers import free_port

    base_settings = settings_factory(database_url=pg_url, backbone=str(tiny_backbone_dir))
    served_backbone = load_backbone(str(tiny_backbone_dir))  # what the servers load: the same identity
    publish_task(base_settings, served_backbone, "sentiment", seed=1)
    publish_task(base_settings, served_backbone, "sentiment", seed=2)
    procs, bases = [], []
    try:
        for i in range(2):
            s = settings_factory(database_url=pg_url, backbone=str(tiny_backbone_dir), port=free_port())
            procs.append(start_server(s, tmp_path / f"replica-{i}.log", worker=False))
            bases.append(f"http://127.0.0.1:{s.port}")
        for proc, base, i in zip(procs, bases, range(2), strict=True):
            wait_ready(base, proc, tmp_path / f"replica-{i}.log")
        a, b = (httpx.Client(base_url=u, timeout=10) for u in bases)

        def served(client: httpx.Client) -> int:
            r = client.post("/predict/sentiment", json={"inputs": ["great"]})
            assert r.status_code == 200, r.text
            return r.json()["version"]

        assert served(a) == served(b) == 2
        for target in (1, 2, 1):
            assert a.post(f"/tasks/sentiment/versions/{target}/activate").status_code == 200
            t0 = time.monotonic()
            while served(b) != target:
                assert time.monotonic() - t0 < 1.0, "replica B still serves the old version after 1 s"
                time.sleep(0.01)
            assert served(a) == target
    finally:
        for proc in procs:
            stop_server(proc)
