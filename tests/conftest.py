"""Shared fixtures: a tiny random backbone, settings in tmp_path, a hub and an app around them,
`publish` (app.versions.publish of a random task), and the databases (`sqlite_url`, `pg_url`,
`db_url` over both). Helpers that are plain functions are in tests/helpers.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PG_HOST = os.environ.get("PROMPTHUB_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PROMPTHUB_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PROMPTHUB_TEST_PG_USER", "postgres")


# ------------------------------------------------------------------------------ backbones


@pytest.fixture(scope="session")
def tokenizer():
    from tests.helpers import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_backbone():
    """The one tiny random backbone (tests.helpers.make_tiny_backbone), shared by the session."""
    from tests.helpers import make_tiny_backbone

    return make_tiny_backbone()


@pytest.fixture(scope="session")
def make_checkpoint(tiny_backbone):
    """`make_checkpoint(labels=..., meta=...) -> bytes` on the tiny backbone."""
    from tests.helpers import tiny_checkpoint

    return lambda **kw: tiny_checkpoint(tiny_backbone, **kw)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory, tiny_backbone) -> Path:
    """The tiny backbone saved as a local model folder, so server and worker processes load it."""
    d = tmp_path_factory.mktemp("tiny-bert")
    tiny_backbone.model.save_pretrained(str(d))
    tiny_backbone.tokenizer.save_pretrained(str(d))
    return d


# ------------------------------------------------------------------------- settings, hub, app


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., object]:
    from app.config import Settings

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": f"sqlite:///{tmp_path / 'prompthub.db'}",
            "store_dir": str(tmp_path / "store"),
            "data_dir": str(tmp_path / "datasets"),
            "embedded_worker": False,
            "max_wait_ms": 2.0,
            "cache_bytes": 64 * 1024 * 1024,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(settings_factory):
    return settings_factory()


@pytest.fixture
def hub_factory(tiny_backbone) -> Iterator[Callable[..., object]]:
    from app.db.session import run_migrations
    from app.main import make_hub
    from app.serving.hub import Hub

    made: list[Hub] = []

    def make(settings) -> Hub:
        run_migrations(settings.database_url)
        hub = make_hub(settings, backbones=[tiny_backbone])
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.close()


@pytest.fixture
def hub(hub_factory, settings):
    return hub_factory(settings)


@pytest.fixture
def app(hub, settings):
    from app.main import create_app

    return create_app(settings, hub)


@pytest.fixture
def client(app) -> Iterator[object]:
    """A client on a loopback connection (keyless unless auth=required: app.api.edge)."""
    from tests.helpers import local_client

    with local_client(app) as c:
        yield c


@pytest.fixture
def publish(hub, settings) -> Callable[..., int]:
    """`publish(name, task_type="classification", seed=..., activate=...) -> version number`."""
    from tests.helpers import publish_task

    def _publish(name: str, task_type: str = "classification", **kw: object) -> int:
        return publish_task(settings, hub.backbone, name, task_type, **kw)

    return _publish


# ------------------------------------------------------------------------------ databases


def _admin_connect():
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=3
    )


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head; dropped afterwards. The
    tests that need it are skipped, saying why, when the server cannot be reached."""
    from app.db.session import dispose_engines, run_migrations

    try:
        admin = _admin_connect()
    except Exception as e:
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as {PG_USER}: {e}")
    name = f"prompthub_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    try:
        run_migrations(url)
        yield url
    finally:
        dispose_engines()
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_all(url: str) -> None:
    from sqlalchemy import text

    from app.db.models import Base
    from app.db.session import get_sessionmaker

    with get_sessionmaker(url)() as s:
        names = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text(f"TRUNCATE {names} CASCADE"))
        else:
            for t in reversed(Base.metadata.sorted_tables):
                s.execute(t.delete())
        s.commit()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied."""
    _truncate_all(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A migrated SQLite file in tmp_path."""
    from app.db.session import run_migrations

    url = f"sqlite:///{tmp_path / 'prompthub.db'}"
    run_migrations(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(name)


@pytest.fixture
def session_factory(db_url: str):
    from app.db.session import get_sessionmaker

    return get_sessionmaker(db_url)


# ------------------------------------------------------------------------------ S3 (moto_server)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[object]:
    """A moto standalone S3 server on a free port (real HTTP S3), bucket `prompthub-test` created;
    yields tests.helpers.S3Server (`.endpoint`, `.env`, `.url(prefix)`). The AWS settings are put
    in this process's environment for the session (boto3 reads them), and restored after."""
    from tests.helpers import start_s3_server, stop_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("s3") / "moto_server.log")
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop_s3_server(server)


@pytest.fixture
def s3_url(s3_server) -> str:
    """`s3://prompthub-test/<fresh prefix>`: this test's own part of the bucket."""
    return s3_server.url(f"t-{uuid.uuid4().hex[:12]}")
