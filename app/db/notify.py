"""Which task's versions changed: PostgreSQL LISTEN/NOTIFY, and the same news inside one process.

Sending: every ORM flush that adds, changes or deletes a `Task` or `TaskVersion` row (publish,
register, activate, delete, the doctor's repairs: every path goes through the session) runs
`SELECT pg_notify('prompthub_versions', <task name>)` on the same connection, in the same
transaction. PostgreSQL delivers a notification only when its transaction commits (and drops it
on a rollback), so a listener never hears of a version before it can read it. After the commit the
process's own subscribers are called at once (`subscribe`), so a replica that activated a version
serves it on the next request, without waiting for its own notification.

Receiving: `VersionListener` holds one autocommit psycopg 3 connection per process, LISTENs on the
channel and calls `on_change(task name)`; `on_change(None)` ("anything may have changed") when the
connection is lost and again once LISTEN is back, since notifications sent meanwhile are lost.
Caches keep a short TTL as well (app.serving.versions_cache): a partition the listener has not
noticed yet still ends within the TTL.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.db.models import Task, TaskVersion

log = logging.getLogger(__name__)

CHANNEL = "prompthub_versions"
_CHANGED = "prompthub_versions_changed"  # session.info key: task names changed in this transaction

_subscribers: list[weakref.ReferenceType] = []
_sub_lock = threading.Lock()


def subscribe(callback: Callable[[str | None], None]) -> None:
    """Call `callback(task name)` after every commit in this process that changed the task's rows.
    Held weakly (a bound method's object may go away: it is then dropped)."""
    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else weakref.ref(callback)
    with _sub_lock:
        _subscribers.append(ref)


def _publish_locally(names: set[str]) -> None:
    with _sub_lock:
        alive = [(r, r()) for r in _subscribers]
        _subscribers[:] = [r for r, fn in alive if fn is not None]
    for _, fn in alive:
        if fn is None:
            continue
        for name in names:
            try:
                fn(name)
            except Exception:  # a subscriber's failure must not fail the writer's commit
                log.exception("version change subscriber failed")


def _task_name(obj: Any) -> str | None:
    if isinstance(obj, Task):
        return obj.name
    if isinstance(obj, TaskVersion):
        return obj.task_name
    return None


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _flush_context: Any) -> None:
    names = {n for obj in (*session.new, *session.dirty, *session.deleted) if (n := _task_name(obj))}
    if not names:
        return
    session.info.setdefault(_CHANGED, set()).update(names)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        for name in sorted(names):
            conn.execute(text("SELECT pg_notify(:channel, :name)"), {"channel": CHANNEL, "name": name})


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    names = session.info.pop(_CHANGED, None)
    if names:
        _publish_locally(names)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_CHANGED, None)


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg's connection string (driver suffix dropped)."""
    from app.db.session import normalize_url

    return make_url(normalize_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


class VersionListener:
    """A daemon thread that LISTENs on `CHANNEL` and calls `on_change(name | None)`.

    `wait_s`: how long one wait for notifications lasts (and so how soon `stop` is noticed);
    `health_s`: every so often the connection is checked with a query, so a dead one is replaced
    (TCP keepalives catch a silent peer as well). `connected` is set while LISTEN is in place."""

    def __init__(
        self,
        url: str,
        on_change: Callable[[str | None], None],
        *,
        wait_s: float = 0.5,
        health_s: float = 5.0,
        retry_s: float = 1.0,
        retry_max_s: float = 10.0,
    ) -> None:
        self.conninfo = libpq_url(url)
        self.on_change = on_change
        self.wait_s = wait_s
        self.health_s = health_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.connected = threading.Event()
        self.received = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> VersionListener:
        self._thread = threading.Thread(target=self._run, name="version-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _changed(self, name: str | None) -> None:
        try:
            self.on_change(name)
        except Exception:
            log.exception("version listener: on_change failed")

    def _run(self) -> None:
        import psycopg

        delay = self.retry_s
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=2,
                    application_name="prompthub-version-listener",
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._changed(None)  # whatever was cached before LISTEN may be stale
                    self.connected.set()
                    delay = self.retry_s
                    log.info("version listener: listening on %s", CHANNEL)
                    self._listen(conn)
            except Exception as e:
                if self._stop.is_set():
                    break
                was = self.connected.is_set()
                self.connected.clear()
                self._changed(None)  # notifications may be lost until LISTEN is back
                log.warning(
                    "version listener: %s; retrying in %.0f s", e if was else f"cannot listen: {e}", delay
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
        self.connected.clear()

    def _listen(self, conn: Any) -> None:
        import time

        checked = time.monotonic()
        while not self._stop.is_set():
            for note in conn.notifies(timeout=self.wait_s):
                self.received += 1
                self._changed(note.payload or None)
            if time.monotonic() - checked >= self.health_s:
                conn.execute("SELECT 1")
                checked = time.monotonic()


__all__ = ["CHANNEL", "VersionListener", "libpq_url", "subscribe"]
