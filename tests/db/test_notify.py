"""Version-change news (app.db.notify): NOTIFY in the writer's transaction (delivered on commit,
never on rollback), heard by a real LISTEN connection; this process's subscribers after a commit."""

from __future__ import annotations

import queue

import pytest

from app import versions
from app.db import notify
from app.db import tasks as db_tasks
from app.db.errors import Conflict
from app.db.notify import VersionListener
from tests.helpers import publish_task, session_for, store_for, wait_for


def _drain(q: queue.Queue, wait: float) -> list:
    out = []
    try:
        out.append(q.get(timeout=wait))
        while True:
            out.append(q.get(timeout=0.3))
    except queue.Empty:
        return out


@pytest.mark.postgres
def test_publish_activate_delete_are_heard_by_a_listener_and_a_rollback_is_not(
    pg_url, settings_factory, tiny_backbone
):
    settings = settings_factory(database_url=pg_url)
    heard: queue.Queue = queue.Queue()
    listener = VersionListener(pg_url, heard.put, wait_s=0.1).start()
    try:
        assert listener.connected.wait(10)
        assert _drain(heard, 1.0) == [None]  # "anything may have changed" once LISTEN is in place
        publish_task(settings, tiny_backbone, "alpha", seed=1)
        assert _drain(heard, 5) == ["alpha"]
        publish_task(settings, tiny_backbone, "alpha", seed=2)
        assert _drain(heard, 5) == ["alpha"]
        with session_for(settings) as s:
            versions.activate(s, "alpha", 1)
        assert _drain(heard, 5) == ["alpha"]

        with session_for(settings) as s:  # a write that rolls back announces nothing
            task = db_tasks.get_task(s, "alpha")
            task.active_version = 2
            s.flush()
            s.rollback()
        with session_for(settings) as s, pytest.raises(Conflict):
            db_tasks.delete_version(s, "alpha", 1)  # active: refused before any write
        assert _drain(heard, 1.0) == []

        with session_for(settings) as s:
            versions.delete_task(s, store_for(settings), "alpha")
        assert _drain(heard, 5) == ["alpha"]
        assert listener.received == 4
    finally:
        listener.stop()
    assert not listener.connected.is_set()


@pytest.mark.postgres
def test_the_listener_comes_back_after_its_connection_is_killed(pg_url):
    import psycopg

    heard: queue.Queue = queue.Queue()
    listener = VersionListener(pg_url, heard.put, wait_s=0.1, retry_s=0.2).start()
    try:
        assert listener.connected.wait(10)
        _drain(heard, 0.5)
        with psycopg.connect(notify.libpq_url(pg_url), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'prompthub-version-listener' AND datname = current_database()"
            )
        # lost: everything is invalidated; back: invalidated again, and notifications arrive again
        wait_for(lambda: heard.qsize() >= 2, 15, "the listener to notice and reconnect")
        assert set(_drain(heard, 0.5)) == {None}
        assert listener.connected.wait(10)
        with psycopg.connect(notify.libpq_url(pg_url), autocommit=True) as c:
            c.execute("SELECT pg_notify(%s, 'beta')", (notify.CHANNEL,))
        assert _drain(heard, 5) == ["beta"]
    finally:
        listener.stop()


def test_this_process_subscribers_hear_commits_only(sqlite_url, settings_factory, tiny_backbone):
    settings = settings_factory(database_url=sqlite_url)
    heard: list = []

    class Sub:
        def on(self, name):
            heard.append(name)

    sub = Sub()
    notify.subscribe(sub.on)
    publish_task(settings, tiny_backbone, "gamma", seed=1)
    assert heard == ["gamma"]
    with session_for(settings) as s:
        db_tasks.get_task(s, "gamma").description = "changed"
        s.flush()
        s.rollback()
    assert heard == ["gamma"]
    del sub  # held weakly: a dropped subscriber is forgotten
    publish_task(settings, tiny_backbone, "gamma", seed=2)
    assert heard == ["gamma"]
