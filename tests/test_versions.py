"""app.versions: where the store and the database meet (publish, register, activate, delete, resolve)."""

from __future__ import annotations

import threading

import pytest

from app import versions
from app.db import tasks as db_tasks
from app.db.errors import Conflict, NotFound
from app.engine.checkpoint import parse_header, sha256_bytes
from app.store import PromptStore


@pytest.fixture
def store(tmp_path) -> PromptStore:
    return PromptStore(tmp_path / "prompts_store")


def test_publish_writes_the_file_then_the_row(store, session_factory, make_checkpoint):
    blob = make_checkpoint(meta={"metrics": {"accuracy": 0.7}, "training": {"epochs": 2}, "data": {"x": 1}})
    with session_factory() as s:
        p = versions.publish(s, store, "sent", blob, source="job:1")
        assert p == versions.Published("sent", 1, sha256_bytes(blob), len(blob))
        row = db_tasks.get_version(s, "sent", 1)
        assert row.file == "sent/v0001.safetensors" and row.sha256 == p.sha256 and row.source == "job:1"
        assert row.metrics == {"accuracy": 0.7} and row.training == {"epochs": 2, "data": {"x": 1}}
        assert row.spec["task_type"] == "classification" and row.spec["labels"] == ["neg", "pos"]
        assert db_tasks.get_task(s, "sent").active_version == 1
        assert store.read_version("sent", 1, p.sha256) == blob
        assert store.read_sidecar("sent", 1)["metadata"] == parse_header(blob)
        # the next one, not activated
        p2 = versions.publish(
            s, store, "sent", make_checkpoint(labels=("a", "b")), source="t", activate=False
        )
        assert p2.version == 2 and db_tasks.get_task(s, "sent").active_version == 1
        assert versions.resolve(s, "sent") == (1, p.sha256)
        assert versions.resolve(s, "sent", 2) == (2, p2.sha256)
        versions.activate(s, "sent", 2)
        assert versions.resolve(s, "sent")[0] == 2
        assert db_tasks.get_task(s, "sent").labels == ["a", "b"]


def test_resolve_and_activate_errors(store, session_factory, make_checkpoint):
    with session_factory() as s:
        versions.publish(s, store, "sent", make_checkpoint(), source="t")
        with pytest.raises(versions.VersionNotFound) as e:
            versions.resolve(s, "nope")
        assert e.value.name == "nope" and e.value.version is None and "task 'nope' not found" in str(e.value)
        with pytest.raises(versions.VersionNotFound, match="version 7 of task 'sent'"):
            versions.resolve(s, "sent", 7)
        with pytest.raises(NotFound):
            versions.activate(s, "sent", 7)


@pytest.mark.parametrize("name", ["../evil", "A", "a/b", ""])
def test_publish_refuses_bad_names(store, session_factory, make_checkpoint, name):
    with session_factory() as s, pytest.raises(ValueError, match="invalid task name"):
        versions.publish(s, store, name, make_checkpoint(), source="t")
    assert store.scan() == []


def test_publish_of_another_task_type_is_a_conflict_and_leaves_no_file(
    store, session_factory, make_checkpoint
):
    with session_factory() as s:
        versions.publish(s, store, "sent", make_checkpoint(), source="t")
        db_tasks.get_task(s, "sent").task_type = "token-classification"
        s.commit()
        with pytest.raises(Conflict, match="token-classification"):
            versions.publish(s, store, "sent", make_checkpoint(), source="t")
    assert store.versions("sent") == [1]


def test_publish_takes_the_next_number_when_a_file_is_already_there(store, session_factory, make_checkpoint):
    """A file written by another writer (no row yet) is never replaced: the next number is taken."""
    other = make_checkpoint(labels=("x", "y"))
    store.write_version("sent", 1, other, {})
    with session_factory() as s:
        p = versions.publish(s, store, "sent", make_checkpoint(), source="t")
    assert p.version == 2 and store.read_version("sent", 1, sha256_bytes(other)) == other


def test_concurrent_publishers_get_distinct_versions(store, db_url, make_checkpoint):
    from app.db.session import get_sessionmaker

    maker = get_sessionmaker(db_url)
    blobs = [make_checkpoint(meta={"metrics": {"i": i}}) for i in range(6)]
    got: list[int] = []
    errors: list[BaseException] = []

    def run(blob: bytes) -> None:
        try:
            with maker() as s:
                got.append(versions.publish(s, store, "sent", blob, source="race").version)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    with maker() as s:
        rows = db_tasks.get_versions(s, "sent")
        assert [r.version for r in rows] == [1, 2, 3, 4, 5, 6]
        assert all(store.read_version("sent", r.version, r.sha256) for r in rows)


def test_register_a_file_already_in_the_store(store, session_factory, make_checkpoint):
    blob = make_checkpoint(meta={"source": "shipped", "metrics": {"accuracy": 0.5}})
    store.write_version("sent", 3, blob, {})
    store.write_version("junk", 1, b"not a checkpoint", {})
    with session_factory() as s:
        p = versions.register(s, store, "sent", 3)
        assert p.version == 3 and p.sha256 == sha256_bytes(blob)
        row = db_tasks.get_version(s, "sent", 3)
        assert row.source == "shipped" and row.metrics == {"accuracy": 0.5}
        with pytest.raises(Conflict):
            versions.register(s, store, "sent", 3)
        with pytest.raises(versions.NotRegistrable):
            versions.register(s, store, "junk", 1)
        store.path("sent", 3).write_bytes(blob[:-4] + b"XXXX")
        store.write_version("sent", 4, blob, {})
        store.path("sent", 4).write_bytes(blob[:-4] + b"XXXX")  # no longer matches its sidecar
        with pytest.raises(versions.NotRegistrable, match="sidecar"):
            versions.register(s, store, "sent", 4)


def test_delete_task_drops_rows_then_files(store, session_factory, make_checkpoint):
    with session_factory() as s:
        versions.publish(s, store, "sent", make_checkpoint(), source="t")
        versions.publish(s, store, "sent", make_checkpoint(), source="t")
        assert versions.delete_task(s, store, "sent") == 2
        assert db_tasks.get_task(s, "sent") is None and not store.task_dir("sent").exists()
        with pytest.raises(NotFound):
            versions.delete_task(s, store, "sent")


def test_two_publishers_never_delete_each_others_file(store, db_url, make_checkpoint, monkeypatch):
    """Publisher A's file is in the store, its row not yet written, when B publishes and then fails
    (its row refused): B takes the next number and removes only its own file; then both versions are
    served. A store never removes a file whose sha256 is not the caller's."""
    from app.db.session import get_sessionmaker

    maker = get_sessionmaker(db_url)
    a, b = make_checkpoint(meta={"metrics": {"who": "a"}}), make_checkpoint(meta={"metrics": {"who": "b"}})
    stored_a = store.write_version("sent", 1, a, parse_header(a))  # A, between its file and its row
    assert store.delete_own("sent", 1, sha256_bytes(b)) is False and store.exists("sent", 1)

    real_add = db_tasks.add_version

    def refused(*args, **kw):
        raise Conflict("refused (simulated)")

    monkeypatch.setattr(db_tasks, "add_version", refused)
    with maker() as s, pytest.raises(Conflict, match="simulated"):
        versions.publish(s, store, "sent", b, source="b")
    monkeypatch.setattr(db_tasks, "add_version", real_add)
    assert store.versions("sent") == [1] and store.read_version("sent", 1, stored_a.sha256) == a
    with maker() as s:  # A's row, then B again: both served
        versions.register(s, store, "sent", 1, activate=True)
        assert versions.publish(s, store, "sent", b, source="b").version == 2
        for v, blob in ((1, a), (2, b)):
            number, sha = versions.resolve(s, "sent", v)
            assert store.read_version("sent", number, sha) == blob


def test_a_failed_sidecar_write_leaves_nothing_to_register(
    store, session_factory, make_checkpoint, monkeypatch
):
    """The sidecar cannot be written (disk full, read-only folder): publish fails once, without
    trying 20 numbers, and leaves no checkpoint that a start-up would register and activate."""
    from app.ops.maintenance import startup_sync
    from app.store import StoreError
    from app.store import prompts as store_prompts

    calls = []

    def no_space(*args, **kw):
        calls.append(1)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_prompts, "write_sidecar", no_space)
    with session_factory() as s:
        with pytest.raises(StoreError, match="No space left"):
            versions.publish(s, store, "sent", make_checkpoint(), source="job:1")
        assert len(calls) == 1
        assert store.scan() == [] and store.versions("sent") == []
        monkeypatch.undo()
        assert startup_sync(s, store) == []
        assert db_tasks.get_task(s, "sent") is None


def test_a_failed_row_write_removes_the_file(store, session_factory, make_checkpoint, monkeypatch):
    """The database refuses the row (down, read-only): the file just written is removed again."""
    from sqlalchemy.exc import OperationalError

    def down(*args, **kw):
        raise OperationalError("INSERT", {}, Exception("database is down"))

    monkeypatch.setattr(db_tasks, "add_version", down)
    with session_factory() as s, pytest.raises(OperationalError):
        versions.publish(s, store, "sent", make_checkpoint(), source="job:1")
    assert store.scan() == []


def test_deleting_a_task_cancels_its_jobs_and_publish_refuses_them(store, session_factory, make_checkpoint):
    from app.db import job_queue
    from app.db import jobs as db_jobs

    with session_factory() as s:
        versions.publish(s, store, "sent", make_checkpoint(), source="t")
        running = db_jobs.create_job(s, kind="single", payload={}, task_names=["sent"], max_queued=10).id
        assert job_queue.claim_next_job(s, "w1").id == running
        queued = db_jobs.create_job(
            s, kind="multitask", payload={}, task_names=["other", "sent"], max_queued=10
        ).id
        unrelated = db_jobs.create_job(s, kind="single", payload={}, task_names=["other"], max_queued=10).id
        assert versions.delete_task(s, store, "sent") == 1
        assert db_jobs.get_job(s, queued).state == "cancelled"
        j = db_jobs.get_job(s, running)
        assert j.state == "running" and j.cancel_requested
        assert db_jobs.get_job(s, unrelated).state == "queued"
        # the running job finishes training and publishes: refused, the task does not come back
        with pytest.raises(versions.JobNotLive):
            versions.publish(s, store, "sent", make_checkpoint(), source=f"job:{running}", job_id=running)
        assert db_tasks.get_task(s, "sent") is None and store.scan() == []
        # a live job publishes as before
        live = db_jobs.create_job(s, kind="single", payload={}, task_names=["sent"], max_queued=10).id
        db_jobs.request_cancel(s, unrelated)
        assert job_queue.claim_next_job(s, "w2").id == live
        assert versions.publish(s, store, "sent", make_checkpoint(), source="j", job_id=live).version == 1
