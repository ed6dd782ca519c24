"""Engines, sessions and migrations.

SQLite (the default, one file under var/) runs in WAL mode with a busy timeout so the server and
the worker process can share it; PostgreSQL goes through psycopg 3. `run_migrations` applies the
Alembic migrations programmatically, from any working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_DIR = REPO_ROOT / "alembic"
SQLITE_BUSY_TIMEOUT_MS = 30_000

_lock = threading.Lock()
_makers: dict[str, sessionmaker[Session]] = {}


def normalize_url(url: str) -> str:
    """Route plain PostgreSQL URLs to psycopg 3 ("postgresql://" -> "postgresql+psycopg://")."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for in-memory databases)."""
    u = make_url(normalize_url(url))
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for `url`; creates the parent folder of a SQLite file."""
    url = normalize_url(url)
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """One session factory (and engine) per URL for the life of the process."""
    url = normalize_url(url)
    with _lock:
        maker = _makers.get(url)
        if maker is None:
            maker = sessionmaker(bind=make_engine(url), expire_on_commit=False)
            _makers[url] = maker
        return maker


def dispose_engines() -> None:
    """Close every cached engine (tests, shutdown)."""
    with _lock:
        for maker in _makers.values():
            engine = maker.kw.get("bind")
            if engine is not None:
                engine.dispose()
        _makers.clear()


@contextlib.contextmanager
def _migration_lock(url: str, suffix: str = ".migrate.lock") -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (PostgreSQL uses an advisory lock
    in alembic/env.py)."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + suffix), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


STARTUP_LOCK_KEY = 0x50525354  # pg_advisory_lock key of the start-up repairs (not the migrations')


@contextlib.contextmanager
def startup_lock(url: str) -> Iterator[None]:
    """One process at a time runs the start-up store sync against a database: replicas starting
    together take turns (a PostgreSQL session advisory lock on its own connection, released when
    that connection closes even if the process dies; a file lock beside a SQLite file), so two of
    them never register or repair the same files at once, and the later ones find nothing to do."""
    if is_sqlite(url):
        with _migration_lock(url, suffix=".startup.lock"):
            yield
        return
    engine = make_engine(url, poolclass=_null_pool())
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({STARTUP_LOCK_KEY})")
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({STARTUP_LOCK_KEY})")
    finally:
        engine.dispose()


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    cfg.attributes["database_url"] = normalize_url(url)
    cfg.attributes["configure_logging"] = False
    return cfg


def run_migrations(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (Alembic, programmatic)."""
    from alembic import command

    with _migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def migrate_command(args: argparse.Namespace) -> int:
    """`prompthub migrate`: apply the migrations to PROMPTHUB_DATABASE_URL."""
    from app.config import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    url = settings.database_url
    try:
        run_migrations(url)
    except Exception as e:  # report, do not dump a traceback at the operator
        log.error("migration failed: %s", e)
        print(f"migration failed: {e}")
        return 1
    print(f"database at revision {current_revision(url)} ({make_url(normalize_url(url)).render_as_string()})")
    return 0


# Every session announces the tasks whose rows it changed (PostgreSQL NOTIFY in the same
# transaction; this process's caches after the commit): registered once, on import.
from app.db import notify as _notify  # noqa: E402, F401
