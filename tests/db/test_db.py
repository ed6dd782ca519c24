"""Migrations, settings and the data access functions, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, update

from app.config import Settings, get_settings, reset_settings
from app.db import datasets as db_datasets
from app.db import errors, job_queue
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.db.models import Base, Job, utcnow
from app.db.session import (
    current_revision,
    get_sessionmaker,
    make_engine,
    normalize_url,
    run_migrations,
)

# ------------------------------------------------------------------------------ settings


def test_settings_defaults_and_env(monkeypatch):
    s = Settings()
    assert s.database_url == "sqlite:///var/prompthub.db"
    assert s.max_batch_size == 32 and s.on_crash == "requeue" and s.embedded_worker is True
    monkeypatch.setenv("PROMPTHUB_DEVICES", "cuda:0, cuda:1")
    monkeypatch.setenv("PROMPTHUB_ON_CRASH", "FAIL")
    monkeypatch.setenv("PROMPTHUB_EMBEDDED_WORKER", "false")
    reset_settings()
    try:
        s = get_settings()
        assert s.device_list == ["cuda:0", "cuda:1"]
        assert s.on_crash == "fail" and s.embedded_worker is False
        assert get_settings() is s
    finally:
        reset_settings()


def test_settings_refuse_bad_values(monkeypatch):
    monkeypatch.setenv("PROMPTHUB_TEXT_OVERFLOW", "explode")
    with pytest.raises(ValueError, match="text_overflow"):
        Settings()


def test_normalize_url():
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


# ------------------------------------------------------------------------------ migrations


HEAD_REVISION = "0005"  # the newest migration (0004: idempotency keys, job promotion; 0005: workers table, jobs.dispatched_at)


def _schema_diffs(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def test_migrations_sqlite_match_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # works from any working directory
    url = f"sqlite:///{tmp_path / 'sub' / 'dir' / 'db.sqlite'}"
    run_migrations(url)
    run_migrations(url)  # idempotent
    assert current_revision(url) == HEAD_REVISION
    assert _schema_diffs(url) == []
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert set(inspect(conn).get_table_names()) >= {"tasks", "task_versions", "datasets", "jobs"}
    engine.dispose()


@pytest.mark.postgres
def test_migrations_postgres_match_models(pg_url):
    assert current_revision(pg_url) == HEAD_REVISION
    assert _schema_diffs(pg_url) == []
    run_migrations(pg_url)  # idempotent
    assert current_revision(pg_url) == HEAD_REVISION


def test_migrate_command(tmp_path, monkeypatch, capsys):
    from app.db.session import migrate_command

    monkeypatch.setenv("PROMPTHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'm.db'}")
    reset_settings()
    try:
        assert migrate_command(None) == 0
    finally:
        reset_settings()
    assert HEAD_REVISION in capsys.readouterr().out


# ------------------------------------------------------------------------------ tasks and versions


def _add(s, name="sent", version=None, activate=True, task_type="classification", labels=("neg", "pos")):
    return db_tasks.add_version(
        s,
        name=name,
        task_type=task_type,
        labels=list(labels),
        file=f"{name}/v{version or 0:04d}.safetensors",
        sha256="ab" * 32,
        size_bytes=123,
        spec={"task_type": task_type, "labels": list(labels)},
        metrics={"accuracy": 0.9},
        training={"epochs": 1},
        source="test",
        activate=activate,
        version=version,
    )


def test_tasks_and_versions(session_factory):
    with session_factory() as s:
        v1 = _add(s)
        assert v1.version == 1
        assert db_tasks.get_task(s, "sent").active_version == 1
        v2 = _add(s, activate=False, labels=("a", "b"))
        assert v2.version == 2
        task = db_tasks.get_task(s, "sent")
        assert task.active_version == 1 and task.labels == ["neg", "pos"]
        assert [v.version for v in db_tasks.get_versions(s, "sent")] == [1, 2]
        assert db_tasks.get_version(s, "sent", 2).metrics == {"accuracy": 0.9}
        assert db_tasks.get_version(s, "sent", 3) is None
        task = db_tasks.activate_version(s, "sent", 2)
        assert task.active_version == 2 and task.labels == ["a", "b"]
        assert task.created_at.tzinfo is not None
        with pytest.raises(errors.NotFound):
            db_tasks.activate_version(s, "sent", 9)
        with pytest.raises(errors.NotFound):
            db_tasks.activate_version(s, "nope", 1)
        with pytest.raises(errors.Conflict):
            _add(s, version=2)
        with pytest.raises(errors.Conflict, match="classification"):
            _add(s, task_type="token-classification")
        _add(s, name="other", version=5)
        assert [t.name for t in db_tasks.list_tasks(s)] == ["other", "sent"]
        assert db_tasks.get_task(s, "other").active_version == 5
        files = db_tasks.delete_task(s, "sent")
        assert len(files) == 2 and all(f.startswith("sent/") for f in files)
        assert db_tasks.get_task(s, "sent") is None
        assert db_tasks.get_versions(s, "sent") == []
        with pytest.raises(errors.NotFound):
            db_tasks.delete_task(s, "sent")


def test_resolve_version_is_one_query(session_factory):
    from sqlalchemy import event, update

    from app.db.models import Task

    with session_factory() as s:
        _add(s)
        _add(s, activate=False)
        _add(s, name="empty", activate=False)  # a task whose only version is not active
        s.execute(update(Task).where(Task.name == "empty").values(active_version=None))
        s.commit()
    statements: list[str] = []
    with session_factory() as s:
        engine = s.get_bind()
        listener = lambda *a: statements.append(a[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            assert db_tasks.resolve_version(s, "sent") == (True, 1, "ab" * 32)
            assert db_tasks.resolve_version(s, "sent", 2) == (True, 2, "ab" * 32)
            assert db_tasks.resolve_version(s, "sent", 7) == (True, None, None)
            assert db_tasks.resolve_version(s, "nope") == (False, None, None)
            assert db_tasks.resolve_version(s, "empty") == (True, None, None)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    assert len([q for q in statements if q.lstrip().upper().startswith("SELECT")]) == 5


def test_datasets(session_factory):
    with session_factory() as s:
        ds = db_datasets.create_dataset(
            s,
            filename="train.jsonl",
            task_type="classification",
            rows=10,
            columns=["text", "label"],
            path="/tmp/x.jsonl",
            sha256="cd" * 32,
            size_bytes=99,
        )
        assert len(ds.id) == 36
    with session_factory() as s:
        got = db_datasets.get_dataset(s, ds.id)
        assert got.columns == ["text", "label"] and got.rows == 10
        assert db_datasets.get_dataset(s, "missing") is None


# ------------------------------------------------------------------------------ jobs


def _job(s, name="t", max_queued=50, kind="single"):
    return db_jobs.create_job(s, kind=kind, payload={"task": name}, task_names=[name], max_queued=max_queued)


def test_job_lifecycle(session_factory):
    with session_factory() as s:
        a = _job(s, "a")
        b = _job(s, "b")
        assert a.state == "queued" and a.attempts == 0
        with pytest.raises(errors.TooManyJobs):
            _job(s, "c", max_queued=2)
        with pytest.raises(ValueError):
            _job(s, kind="weird")
        assert db_jobs.job_counts(s)["queued"] == 2

        claimed = job_queue.claim_next_job(s, "w1")
        assert claimed.id == a.id and claimed.state == "running" and claimed.worker_id == "w1"
        assert claimed.started_at is not None and claimed.heartbeat_at is not None
        assert (
            db_jobs.heartbeat(s, a.id, {"step": 1, "total": 4, "epoch": 0.25, "loss": 0.7, "message": "x"})
            is False
        )
        assert db_jobs.get_job(s, a.id).progress["step"] == 1

        # cancel: running -> flagged, queued -> cancelled at once
        assert db_jobs.request_cancel(s, a.id).cancel_requested is True
        assert db_jobs.get_job(s, a.id).state == "running"
        assert db_jobs.heartbeat(s, a.id) is True
        cancelled = db_jobs.request_cancel(s, b.id)
        assert cancelled.state == "cancelled" and cancelled.finished_at is not None
        assert job_queue.claim_next_job(s, "w2") is None
        with pytest.raises(errors.NotFound):
            db_jobs.request_cancel(s, "nope")

        done = db_jobs.finish_job(s, a.id, "succeeded", metrics={"acc": 1.0}, result={"a": 3})
        assert done.state == "succeeded" and done.result == {"a": 3} and done.finished_at is not None
        assert db_jobs.request_cancel(s, a.id).state == "succeeded"  # finished jobs stay as they are
        with pytest.raises(ValueError):
            db_jobs.finish_job(s, a.id, "running")
        # a heartbeat on a job that is no longer running tells the worker to stop
        assert db_jobs.heartbeat(s, a.id) is True

        counts = db_jobs.job_counts(s)
        assert counts == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 1}
        assert [j.id for j in db_jobs.list_jobs(s)] == [b.id, a.id]
        assert [j.id for j in db_jobs.list_jobs(s, state="succeeded")] == [a.id]
        assert len(db_jobs.list_jobs(s, limit=1)) == 1


def test_finish_and_release_respect_owner(session_factory):
    with session_factory() as s:
        job = _job(s)
        job_queue.claim_next_job(s, "w1")
        # another worker (or a recovery) cannot be overwritten by a worker that no longer owns the job
        assert db_jobs.finish_job(s, job.id, "failed", error="x", worker_id="w2").state == "running"
        assert db_jobs.heartbeat(s, job.id, worker_id="w2") is True
        assert job_queue.release_job(s, job.id, worker_id="w1") is True
        j = db_jobs.get_job(s, job.id)
        assert j.state == "queued" and j.worker_id is None
        assert job_queue.claim_next_job(s, "w3").id == job.id


def test_claims_oldest_first(session_factory):
    with session_factory() as s:
        ids = [_job(s, f"t{i}").id for i in range(3)]
        got = [job_queue.claim_next_job(s, "w").id for _ in range(3)]
        assert got == ids
        assert job_queue.claim_next_job(s, "w") is None


def _claim_race(url: str, n_jobs: int, n_workers: int) -> list[str]:
    maker = get_sessionmaker(url)
    with maker() as s:
        for i in range(n_jobs):
            _job(s, f"t{i}", max_queued=10_000)
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_workers)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            barrier.wait()
            with maker() as s:
                while (job := job_queue.claim_next_job(s, f"w{k}")) is not None:
                    with lock:
                        claimed.append(job.id)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return claimed


def test_claim_race_sqlite(sqlite_url):
    claimed = _claim_race(sqlite_url, 40, 6)
    assert len(claimed) == 40 and len(set(claimed)) == 40


@pytest.mark.postgres
def test_claim_race_postgres(pg_url):
    claimed = _claim_race(pg_url, 60, 8)
    assert len(claimed) == 60 and len(set(claimed)) == 60
    with get_sessionmaker(pg_url)() as s:
        assert db_jobs.job_counts(s)["running"] == 60


@pytest.mark.postgres
def test_claim_skips_locked_row_postgres(pg_url):
    """While one transaction holds the oldest job, another worker gets the next one at once."""
    from sqlalchemy import select

    maker = get_sessionmaker(pg_url)
    with maker() as s:
        first, second = _job(s, "a").id, _job(s, "b").id
    with maker() as holder, maker() as other:
        locked = holder.scalar(
            select(Job.id).where(Job.state == "queued").order_by(Job.created_at).limit(1).with_for_update()
        )
        assert locked == first
        assert job_queue.claim_next_job(other, "w2").id == second
        holder.rollback()


def _age(s, job_id: str, seconds: float) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
    s.commit()


def test_recover_stale_jobs(session_factory):
    with session_factory() as s:
        stale = _job(s, "a")
        fresh = _job(s, "b")
        job_queue.claim_next_job(s, "w1")
        job_queue.claim_next_job(s, "w2")
        _age(s, stale.id, 120)
        assert job_queue.recover_stale_jobs(s, stale_after_s=30, on_crash="requeue", max_attempts=2) == [
            stale.id
        ]
        j = db_jobs.get_job(s, stale.id)
        assert j.state == "queued" and j.attempts == 1 and j.worker_id is None
        assert "attempt 1" in j.progress["message"]
        assert db_jobs.get_job(s, fresh.id).state == "running"

        # second crash: out of attempts -> failed with a clear error, never left running
        assert job_queue.claim_next_job(s, "w3").id == stale.id
        _age(s, stale.id, 120)
        assert job_queue.recover_stale_jobs(s, stale_after_s=30, on_crash="requeue", max_attempts=2) == [
            stale.id
        ]
        j = db_jobs.get_job(s, stale.id)
        assert j.state == "failed" and j.error == "worker died while running (attempt 2)"
        assert j.finished_at is not None

        # on_crash=fail fails at once
        _age(s, fresh.id, 120)
        assert job_queue.recover_stale_jobs(s, stale_after_s=30, on_crash="fail", max_attempts=5) == [
            fresh.id
        ]
        j = db_jobs.get_job(s, fresh.id)
        assert j.state == "failed" and "worker died while running (attempt 1)" in j.error
        with pytest.raises(ValueError):
            job_queue.recover_stale_jobs(s, stale_after_s=30, on_crash="panic", max_attempts=2)


def test_recover_job_of_dead_process(session_factory):
    """A worker on this host whose process is gone is recovered without waiting for staleness."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = f"{job_queue.make_worker_id().split(':')[0]}:{proc.pid}:deadbeef"
    with session_factory() as s:
        job = _job(s)
        job_queue.claim_next_job(s, dead)
        live = _job(s, "live")
        job_queue.claim_next_job(s, job_queue.make_worker_id())
        ids = job_queue.recover_stale_jobs(s, stale_after_s=3600, on_crash="requeue", max_attempts=2)
        assert ids == [job.id]
        assert db_jobs.get_job(s, live.id).state == "running"


def test_recover_cancel_requested_job_is_cancelled(session_factory):
    with session_factory() as s:
        job = _job(s)
        job_queue.claim_next_job(s, "w1")
        db_jobs.request_cancel(s, job.id)
        _age(s, job.id, 120)
        job_queue.recover_stale_jobs(s, stale_after_s=30, on_crash="requeue", max_attempts=3)
        assert db_jobs.get_job(s, job.id).state == "cancelled"
