"""The workers table (heartbeats, stale, prune) and the job-row decisions of the celery executor
(claim by id, take over from a dead worker, count deaths up to max_worker_kills, dispatch marks), on
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from app.db import job_queue
from app.db import jobs as db_jobs
from app.db import workers as db_workers
from app.db.models import FAILED, Job, WorkerRow, utcnow


def _job(s, name="t", **payload):
    return db_jobs.create_job(
        s, kind="single", payload={"task": name, **payload}, task_names=[name], max_queued=50
    )


def _register(s, id_, **kw):
    values = dict(host="h", pid=1, executor="celery", device_class="cpu", device="cpu", queue="prompthub-cpu")
    values.update(kw)
    return db_workers.register_worker(s, id=id_, **values)


def test_worker_rows_heartbeat_stale_and_prune(session_factory):
    with session_factory() as s:
        _register(s, "h:1:a")
        _register(s, "h:2:b", executor="local", device_class="gpu", device="cuda:0", queue=None)
        assert db_workers.worker_heartbeat(s, "h:1:a", "job-1")
        assert not db_workers.worker_heartbeat(s, "h:9:z", None)  # no row: the caller registers again
        rows = db_workers.list_workers(s, stale_after_s=30)
        assert [(r.id, r.job_id, r.device_class) for r in rows] == [
            ("h:1:a", "job-1", "cpu"),
            ("h:2:b", None, "gpu"),
        ]
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == "h:2:b")
            .values(heartbeat_at=utcnow() - timedelta(seconds=60))
        )
        s.commit()
        assert [r.id for r in db_workers.list_workers(s, stale_after_s=30)] == ["h:1:a"]
        every = db_workers.list_workers(s, stale_after_s=30, include_stale=True)
        assert [(r.id, db_workers.is_stale(r, 30)) for r in every] == [("h:1:a", False), ("h:2:b", True)]
        assert db_workers.prune_workers(s, older_than_s=45) == 1
        db_workers.remove_worker(s, "h:1:a")
        assert db_workers.list_workers(s, stale_after_s=30, include_stale=True) == []


def test_claim_job_by_id(session_factory):
    with session_factory() as s:
        a, b, c = _job(s, "a"), _job(s, "b"), _job(s, "c")
        outcome, job = job_queue.claim_job(s, a.id, "w1")
        assert outcome == job_queue.CLAIMED and job.state == "running" and job.worker_id == "w1"
        assert job_queue.claim_job(s, a.id, "w2")[0] == job_queue.OWNED  # never twice
        assert job_queue.claim_job(s, b.id, "w2", max_running=1) == (job_queue.BUSY, None)
        db_jobs.request_cancel(s, c.id)  # cancelled while queued: its message is dropped
        assert job_queue.claim_job(s, c.id, "w2")[0] == job_queue.GONE
        assert job_queue.claim_job(s, "no-such-job", "w2") == (job_queue.GONE, None)
        db_jobs.finish_job(s, a.id, "succeeded", worker_id="w1")
        assert job_queue.claim_job(s, a.id, "w2")[0] == job_queue.GONE
        assert job_queue.claim_job(s, b.id, "w2", max_running=1)[0] == job_queue.CLAIMED


def test_take_over_counts_deaths_until_max_worker_kills(session_factory):
    with session_factory() as s:
        job = _job(s)
        job_queue.claim_job(s, job.id, "dead-1")
        assert (
            job_queue.take_over_job(s, job.id, dead_worker_id="someone-else", worker_id="w2", max_kills=2)
            == job_queue.GONE
        )
        assert (
            job_queue.take_over_job(s, job.id, dead_worker_id="dead-1", worker_id="w2", max_kills=2)
            == job_queue.CLAIMED
        )
        j = db_jobs.get_job(s, job.id)
        assert (j.state, j.worker_id, j.attempts) == ("running", "w2", 1)
        assert "attempt 1" in j.progress["message"]
        # the same death reported twice (a re-delivered message and the sweep) is counted once
        assert (
            job_queue.take_over_job(s, job.id, dead_worker_id="dead-1", worker_id="w3", max_kills=2)
            == job_queue.GONE
        )
        assert job_queue.take_over_job(s, job.id, dead_worker_id="w2", worker_id="w3", max_kills=2) == FAILED
        j = db_jobs.get_job(s, job.id)
        assert (j.state, j.attempts) == ("failed", 2)
        assert "died 2 times" in j.error and "PROMPTHUB_MAX_WORKER_KILLS=2" in j.error and "w2" in j.error
        # a cancel asked for while its worker was dying ends cancelled, not restarted
        k = _job(s, "k")
        job_queue.claim_job(s, k.id, "dead-2")
        db_jobs.request_cancel(s, k.id)
        assert (
            job_queue.take_over_job(s, k.id, dead_worker_id="dead-2", worker_id="w3", max_kills=5)
            == "cancelled"
        )


def test_sweep_recovery_uses_the_kill_reason_and_marks_for_dispatch(session_factory):
    with session_factory() as s:
        job = _job(s)
        job_queue.claim_job(s, job.id, "gone")
        s.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        s.commit()
        reason = lambda n, w: job_queue.kill_reason(n, 2, w)  # noqa: E731
        assert job_queue.recover_stale_jobs(
            s, stale_after_s=30, on_crash="requeue", max_attempts=2, fail_reason=reason
        ) == [job.id]
        j = db_jobs.get_job(s, job.id)
        assert (j.state, j.attempts, j.dispatched_at) == ("queued", 1, None)
        # re-queued, not yet sent: one sweeper claims the sending
        s.execute(update(Job).where(Job.id == job.id).values(created_at=utcnow() - timedelta(seconds=60)))
        s.commit()
        assert [i for i, _ in job_queue.claim_undispatched(s, older_than_s=5)] == [job.id]
        assert job_queue.claim_undispatched(s, older_than_s=5) == []
        job_queue.undispatch(s, job.id)  # sending failed: the next sweep tries again
        assert [i for i, _ in job_queue.claim_undispatched(s, older_than_s=5)] == [job.id]
        fresh = _job(s, "fresh")
        assert job_queue.claim_undispatched(s, older_than_s=5) == []  # the API is still sending it
        job_queue.mark_dispatched(s, fresh.id)
        assert db_jobs.get_job(s, fresh.id).dispatched_at is not None
        # the second death fails it with the reason
        job_queue.claim_job(s, job.id, "gone-again")
        s.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        s.commit()
        job_queue.recover_stale_jobs(
            s, stale_after_s=30, on_crash="requeue", max_attempts=2, fail_reason=reason
        )
        j = db_jobs.get_job(s, job.id)
        assert j.state == "failed" and "died 2 times" in j.error
