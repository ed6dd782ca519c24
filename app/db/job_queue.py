"""The job queue: claiming a queued job (the local poller's and the celery executor's), putting one
back, and recovering the jobs of dead workers (liveness by heartbeat and by process id). The job
records themselves (create, read, cancel, progress, finish) are app.db.jobs.

Claiming a job commits at once: it must be visible to other workers. Functions that change
something commit before they return.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.db.jobs import get_job, update_jobs
from app.db.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    TERMINAL_STATES,
    Job,
    new_id,
    utcnow,
)


def _claim_values(worker_id: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "state": RUNNING,
        "worker_id": worker_id,
        "started_at": now,
        "heartbeat_at": now,
        "finished_at": None,
        "error": None,
    }


CLAIM_LOCK_KEY = 0x50524F4E  # pg_advisory_xact_lock key serialising claims under max_running


def running_jobs(s: Session) -> int:
    return int(s.scalar(select(func.count()).select_from(Job).where(Job.state == RUNNING)) or 0)


def _running_count():
    """The number of running jobs, as a subquery a guarded UPDATE compares with max_running."""
    return select(func.count()).select_from(Job).where(Job.state == RUNNING).scalar_subquery()


def _claim_guarded(s: Session, job_id: str, worker_id: str, guard: list) -> Job | None:
    """Claim `job_id` for `worker_id` if every `guard` condition holds (one UPDATE, committed):
    the claimed job, or None when another worker or the running-jobs cap got there first."""
    res = update_jobs(s, guard, **_claim_values(worker_id))
    s.commit()
    return get_job(s, job_id) if res.rowcount == 1 else None  # type: ignore[attr-defined]


def claim_next_job(s: Session, worker_id: str, max_running: int | None = None) -> Job | None:
    """Take the oldest queued job for `worker_id`, or None. Two workers never take the same job:
    PostgreSQL locks the row with FOR UPDATE SKIP LOCKED; elsewhere a guarded
    UPDATE ... WHERE state = 'queued' decides, and the loser tries the next job.

    With `max_running`, None is also returned while that many jobs are running (over every
    worker): PostgreSQL serialises such claims with a transaction-scoped advisory lock; SQLite puts
    the count in the guarded UPDATE itself, which runs under the database's write lock."""
    oldest = select(Job.id).where(Job.state == QUEUED).order_by(Job.created_at, Job.id).limit(1)
    if s.get_bind().dialect.name == "postgresql":
        if max_running is not None:
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK_KEY})
            if running_jobs(s) >= max_running:
                s.rollback()
                return None
        job_id = s.scalar(oldest.with_for_update(skip_locked=True))
        if job_id is None:
            s.rollback()
            return None
        update_jobs(s, [Job.id == job_id], **_claim_values(worker_id))
        s.commit()
        return get_job(s, job_id)
    for _ in range(100):
        job_id = s.scalar(oldest)
        if job_id is None:
            s.rollback()
            return None
        guard = [Job.id == job_id, Job.state == QUEUED]
        if max_running is not None:
            guard.append(_running_count() < max_running)
        job = _claim_guarded(s, job_id, worker_id, guard)
        if job is not None:
            return job
        if max_running is not None and running_jobs(s) >= max_running:
            s.rollback()
            return None
    return None


def _requeued(message: str) -> dict[str, Any]:
    """The values that put a running job back in the queue, not dispatched, its progress reset."""
    return {
        "state": QUEUED,
        "worker_id": None,
        "started_at": None,
        "heartbeat_at": None,
        "dispatched_at": None,
        "progress": {"step": 0, "total": None, "epoch": None, "loss": None, "message": message},
    }


def release_job(
    s: Session, id: str, *, worker_id: str | None = None, message: str = "re-queued: worker stopped"
) -> bool:
    """Put a running job back in the queue (a worker shutting down cleanly); True if it was."""
    cond = [Job.id == id, Job.state == RUNNING]
    if worker_id is not None:
        cond.append(Job.worker_id == worker_id)
    res = update_jobs(s, cond, **_requeued(message))
    s.commit()
    return res.rowcount == 1  # type: ignore[attr-defined]


def make_worker_id() -> str:
    """ "<host>:<pid>:<random>": lets recovery on the same host see that a worker process is gone."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"


def worker_process_gone(worker_id: str | None) -> bool:
    """True only when `worker_id` names a process on this host that no longer exists."""
    if not worker_id:
        return False
    parts = worker_id.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but was not reaped (its parent was killed too, and PID 1 of a container
    does not always reap) still answers kill(pid, 0): it is gone all the same."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def recover_stale_jobs(
    s: Session,
    *,
    stale_after_s: float,
    on_crash: str,
    max_attempts: int,
    fail_reason: Callable[[int, str | None], str] | None = None,
) -> list[str]:
    """Jobs left 'running' by a dead worker (heartbeat older than `stale_after_s`, or its process on
    this host gone): re-queued with attempts + 1 when `on_crash` is "requeue" and attempts remain,
    else failed with a clear error (`fail_reason(attempt, worker_id)` when given). Returns their ids.
    A re-queued job is marked not dispatched (the celery executor sends it again)."""
    if on_crash not in ("requeue", "fail"):
        raise ValueError(f"on_crash {on_crash!r}: expected 'requeue' or 'fail'")
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    recovered: list[str] = []
    running = s.scalars(
        select(Job).where(Job.state == RUNNING).execution_options(populate_existing=True)
    ).all()
    for job in running:
        last = job.heartbeat_at or job.started_at or job.created_at
        if not (last < cutoff or worker_process_gone(job.worker_id)):
            continue
        attempt = job.attempts + 1
        guard = [Job.id == job.id, Job.state == RUNNING, Job.worker_id == job.worker_id]
        if job.worker_id is None:
            guard[-1] = Job.worker_id.is_(None)
        guard.append(Job.heartbeat_at == job.heartbeat_at if job.heartbeat_at else Job.heartbeat_at.is_(None))
        if on_crash == "requeue" and attempt < max_attempts and not job.cancel_requested:
            values: dict[str, Any] = {
                **_requeued(f"re-queued: worker died while running (attempt {attempt})"),
                "attempts": attempt,
            }
        elif job.cancel_requested:
            values = {"state": CANCELLED, "attempts": attempt, "finished_at": utcnow()}
        else:
            values = {
                "state": FAILED,
                "attempts": attempt,
                "finished_at": utcnow(),
                "error": (
                    fail_reason(attempt, job.worker_id)
                    if fail_reason is not None
                    else f"worker died while running (attempt {attempt})"
                ),
            }
        res = update_jobs(s, guard, **values)
        if res.rowcount == 1:  # type: ignore[attr-defined]
            recovered.append(job.id)
    s.commit()
    return recovered


def stale_running_jobs(s: Session, stale_after_s: float) -> tuple[int, list[Job]]:
    """(running jobs, those whose worker looks gone: heartbeat older than `stale_after_s`, or its
    process on this host no longer exists)."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    running = list(s.scalars(select(Job).where(Job.state == RUNNING)))
    stale = [
        j
        for j in running
        if (j.heartbeat_at or j.started_at or j.created_at) < cutoff or worker_process_gone(j.worker_id)
    ]
    return len(running), stale


# ---------------------------------------------------------------------------- celery executor
# The broker carries "run job X"; these functions decide, on the job row, what a worker that
# received that message may do. The row stays the only truth: a message for a job that is not
# queued any more is acknowledged and dropped, and two workers never run one job at once.

CLAIMED = "claimed"  # the caller now owns the job (state running)
BUSY = "busy"  # max_running jobs are running: try again later
OWNED = "owned"  # another worker runs it
GONE = "gone"  # no such job, or it is finished (cancelled while queued, ...)


def claim_job(s: Session, id: str, worker_id: str, max_running: int | None = None) -> tuple[str, Job | None]:
    """Claim job `id` for `worker_id` if it is queued: (CLAIMED, job). Otherwise (OWNED, job) when
    another worker runs it, (GONE, job or None) when it is finished or missing, (BUSY, None) when
    `max_running` jobs are running (PostgreSQL: under the same advisory lock as claim_next_job;
    SQLite: the count is in the guarded UPDATE)."""
    pg = s.get_bind().dialect.name == "postgresql"
    for _ in range(20):
        if pg and max_running is not None:
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK_KEY})
        stmt = select(Job.state).where(Job.id == id)
        state = s.scalar(stmt.with_for_update() if pg else stmt)
        if state is None or state in TERMINAL_STATES:
            s.rollback()
            return GONE, (get_job(s, id) if state is not None else None)
        if state == RUNNING:
            s.rollback()
            return OWNED, get_job(s, id)
        guard = [Job.id == id, Job.state == QUEUED]
        if max_running is not None:
            if pg and running_jobs(s) >= max_running:
                s.rollback()
                return BUSY, None
            if not pg:
                guard.append(_running_count() < max_running)
        job = _claim_guarded(s, id, worker_id, guard)
        if job is not None:
            return CLAIMED, job
        if max_running is not None and running_jobs(s) >= max_running:
            s.rollback()
            return BUSY, None
    return BUSY, None


def kill_reason(kills: int, max_kills: int, worker_id: str | None) -> str:
    where = f" (last on worker {worker_id})" if worker_id else ""
    return (
        f"the job's worker process died {kills} times while running it{where}; "
        f"giving up after PROMPTHUB_MAX_WORKER_KILLS={max_kills}"
    )


def take_over_job(s: Session, id: str, *, dead_worker_id: str | None, worker_id: str, max_kills: int) -> str:
    """Job `id` is running under `dead_worker_id`, a worker that died (its message came back from
    the broker, and its process or heartbeat is gone): count the death in `attempts`. The job is
    then cancelled (a cancel was asked for), failed (`max_kills` deaths), or claimed by `worker_id`.
    Returns CANCELLED, FAILED, CLAIMED, or GONE when the row changed meanwhile (someone else acted)."""
    job = get_job(s, id)
    if job is None or job.state != RUNNING or job.worker_id != dead_worker_id:
        s.rollback()
        return GONE
    kills = job.attempts + 1
    now = utcnow()
    values: dict[str, Any]
    if job.cancel_requested:
        outcome, values = CANCELLED, {"state": CANCELLED, "finished_at": now}
    elif kills >= max_kills:
        outcome = FAILED
        values = {"state": FAILED, "finished_at": now, "error": kill_reason(kills, max_kills, dead_worker_id)}
    else:
        outcome = CLAIMED
        values = {
            **_claim_values(worker_id),
            "progress": {
                "step": 0,
                "total": None,
                "epoch": None,
                "loss": None,
                "message": f"restarted: its worker died while running (attempt {kills})",
            },
        }
    guard = [Job.id == id, Job.state == RUNNING]
    guard.append(Job.worker_id == dead_worker_id if dead_worker_id else Job.worker_id.is_(None))
    res = update_jobs(s, guard, attempts=kills, **values)
    s.commit()
    return outcome if res.rowcount == 1 else GONE  # type: ignore[attr-defined]


def mark_dispatched(s: Session, id: str) -> None:
    """ "run job X" was sent for this queued job."""
    update_jobs(s, [Job.id == id, Job.state == QUEUED], dispatched_at=utcnow())
    s.commit()


def claim_undispatched(s: Session, older_than_s: float, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
    """Queued jobs with no "run job X" sent (the API could not reach the broker, or the job was
    re-queued after its worker died), created more than `older_than_s` seconds ago: each is marked
    dispatched by a guarded UPDATE, so one sweeper sends it. Returns (id, payload) to send; the caller
    calls `undispatch` when sending fails."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    rows = s.execute(
        select(Job.id, Job.payload)
        .where(Job.state == QUEUED, Job.dispatched_at.is_(None), Job.created_at < cutoff)
        .order_by(Job.created_at, Job.id)
        .limit(limit)
    ).all()
    s.rollback()
    out: list[tuple[str, dict[str, Any]]] = []
    for job_id, payload in rows:
        res = update_jobs(
            s, [Job.id == job_id, Job.state == QUEUED, Job.dispatched_at.is_(None)], dispatched_at=utcnow()
        )
        s.commit()
        if res.rowcount == 1:  # type: ignore[attr-defined]
            out.append((job_id, dict(payload or {})))
    return out


def undispatch(s: Session, id: str) -> None:
    update_jobs(s, [Job.id == id, Job.state == QUEUED], dispatched_at=None)
    s.commit()
