"""Training jobs: queue, claim, heartbeat, finish, recover.

Claiming a job commits at once: it must be visible to other workers.

Functions that change something commit before they return, so a caller never holds a half-done
change. Reads do not commit.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from app.db.errors import NotFound, TooManyJobs
from app.db.models import (
    CANCELLED,
    FAILED,
    JOB_KINDS,
    JOB_STATES,
    QUEUED,
    RUNNING,
    TERMINAL_STATES,
    Job,
    new_id,
    utcnow,
)


def create_job(
    s: Session,
    *,
    kind: str,
    payload: dict[str, Any],
    task_names: Sequence[str],
    max_queued: int,
    guard: Callable[[Session, Job], None] | None = None,
) -> Job:
    """Queue a job; raises TooManyJobs when `max_queued` jobs are already queued or running.
    `guard(s, job)` runs in the same transaction once the row is flushed, before the commit (e.g.
    recording an idempotency key); what it raises rolls the job back."""
    if kind not in JOB_KINDS:
        raise ValueError(f"job kind {kind!r}: expected one of {', '.join(JOB_KINDS)}")
    pending = s.scalar(select(func.count()).select_from(Job).where(Job.state.in_((QUEUED, RUNNING)))) or 0
    if pending >= max_queued:
        raise TooManyJobs(
            f"{pending} training jobs are queued or running (limit {max_queued}); try again later"
        )
    job = Job(
        id=new_id(),
        state=QUEUED,
        kind=kind,
        payload=payload,
        task_names=list(task_names),
        progress={"step": 0, "total": None, "epoch": None, "loss": None, "message": "queued"},
        cancel_requested=False,
        attempts=0,
        created_at=utcnow(),
    )
    s.add(job)
    if guard is not None:
        try:
            s.flush()
            guard(s, job)
        except BaseException:
            s.rollback()
            raise
    s.commit()
    return job


def get_job(s: Session, id: str) -> Job | None:
    return s.get(Job, id, populate_existing=True)


def list_jobs(s: Session, state: str | None = None, limit: int = 100) -> list[Job]:
    """Newest first."""
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if state is not None:
        if state not in JOB_STATES:
            raise ValueError(f"job state {state!r}: expected one of {', '.join(JOB_STATES)}")
        stmt = stmt.where(Job.state == state)
    return list(s.scalars(stmt.execution_options(populate_existing=True)))


def page_jobs(
    s: Session,
    *,
    after: tuple[datetime, str] | None = None,
    limit: int = 100,
    state: str | None = None,
) -> list[Job]:
    """Newest first (created_at, then id, descending: a total order), the `limit` jobs after the
    (created_at, id) key `after`. Jobs queued meanwhile sort before any key already handed out, so
    paging on does not repeat or skip a job."""
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if after is not None:
        at, id_ = after
        stmt = stmt.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < id_)))
    return list(s.scalars(stmt.execution_options(populate_existing=True)))


def job_counts(s: Session) -> dict[str, int]:
    counts = dict.fromkeys(JOB_STATES, 0)
    for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state)):
        counts[state] = int(n)
    return counts


def _get_job_or_raise(s: Session, id: str) -> Job:
    job = get_job(s, id)
    if job is None:
        raise NotFound(f"no job with id {id!r}")
    return job


def request_cancel(s: Session, id: str) -> Job:
    """Queued: cancelled at once. Running: flagged; the worker stops at its next step.
    Finished jobs are returned unchanged."""
    now = utcnow()
    s.execute(
        update(Job)
        .where(Job.id == id, Job.state == QUEUED)
        .values(state=CANCELLED, finished_at=now, cancel_requested=True, error=None)
        .execution_options(synchronize_session=False)
    )
    s.execute(
        update(Job)
        .where(Job.id == id, Job.state == RUNNING)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    s.commit()
    return _get_job_or_raise(s, id)


def cancel_jobs_of_task(s: Session, name: str) -> list[str]:
    """Cancel every queued or running job that trains task `name` (a multitask job with it too): the
    queued ones at once, the running ones flagged (their worker stops, and publish refuses them).
    Returns their ids."""
    pending = s.execute(select(Job.id, Job.task_names).where(Job.state.in_((QUEUED, RUNNING)))).all()
    ids = [job_id for job_id, names in pending if name in (names or [])]
    if not ids:
        s.rollback()
        return []
    now = utcnow()
    s.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.state == QUEUED)
        .values(state=CANCELLED, finished_at=now, cancel_requested=True, error=None)
        .execution_options(synchronize_session=False)
    )
    s.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.state == RUNNING)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    s.commit()
    return ids


def lock_job_state(s: Session, id: str) -> tuple[str | None, bool]:
    """(state, cancel asked for) of a job, its row locked until the caller's transaction ends
    (PostgreSQL: FOR UPDATE; SQLite: the caller already holds the write lock after a write), so a
    cancel cannot slip in between this read and the caller's commit. (None, False): no such job."""
    stmt = select(Job.state, Job.cancel_requested).where(Job.id == id)
    if s.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = s.execute(stmt).first()
    if row is None:
        return None, False
    return str(row[0]), bool(row[1])


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
    res = s.execute(
        update(Job)
        .where(*guard)
        .values(**_claim_values(worker_id))
        .execution_options(synchronize_session=False)
    )
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
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(**_claim_values(worker_id))
            .execution_options(synchronize_session=False)
        )
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


def heartbeat(
    s: Session, id: str, progress: dict[str, Any] | None = None, *, worker_id: str | None = None
) -> bool:
    """Refresh the job's heartbeat (and progress); returns True when the worker should stop: a cancel
    was asked for, or the job is no longer running (for `worker_id`, when given)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    cond = [Job.id == id, Job.state == RUNNING]
    if worker_id is not None:
        cond.append(Job.worker_id == worker_id)
    res = s.execute(update(Job).where(*cond).values(**values).execution_options(synchronize_session=False))
    s.commit()
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return True
    return bool(s.scalar(select(Job.cancel_requested).where(Job.id == id)))


def finish_job(
    s: Session,
    id: str,
    state: str,
    *,
    metrics: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    worker_id: str | None = None,
    promotion: dict[str, Any] | None = None,
) -> Job:
    """Move a running job to a final state. With `worker_id`, only if that worker still owns it
    (a job recovered from a worker presumed dead is not overwritten by it)."""
    if state not in TERMINAL_STATES:
        raise ValueError(f"finish_job: {state!r} is not a final state ({', '.join(sorted(TERMINAL_STATES))})")
    cond = [Job.id == id, Job.state.in_((QUEUED, RUNNING))]
    if worker_id is not None:
        cond += [Job.worker_id == worker_id, Job.state == RUNNING]
    values: dict[str, Any] = {
        "state": state,
        "finished_at": utcnow(),
        "metrics": metrics,
        "result": result,
        "error": error,
    }
    if promotion is not None:
        values["promotion"] = promotion
    s.execute(update(Job).where(*cond).values(**values).execution_options(synchronize_session=False))
    s.commit()
    return _get_job_or_raise(s, id)


def release_job(
    s: Session, id: str, *, worker_id: str | None = None, message: str = "re-queued: worker stopped"
) -> bool:
    """Put a running job back in the queue (a worker shutting down cleanly); True if it was."""
    cond = [Job.id == id, Job.state == RUNNING]
    if worker_id is not None:
        cond.append(Job.worker_id == worker_id)
    res = s.execute(
        update(Job)
        .where(*cond)
        .values(
            state=QUEUED,
            worker_id=None,
            started_at=None,
            heartbeat_at=None,
            dispatched_at=None,
            progress={"step": 0, "total": None, "epoch": None, "loss": None, "message": message},
        )
        .execution_options(synchronize_session=False)
    )
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
                "state": QUEUED,
                "attempts": attempt,
                "worker_id": None,
                "started_at": None,
                "heartbeat_at": None,
                "dispatched_at": None,
                "progress": {
                    "step": 0,
                    "total": None,
                    "epoch": None,
                    "loss": None,
                    "message": f"re-queued: worker died while running (attempt {attempt})",
                },
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
        res = s.execute(
            update(Job).where(*guard).values(**values).execution_options(synchronize_session=False)
        )
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
    res = s.execute(
        update(Job)
        .where(*guard)
        .values(attempts=kills, **values)
        .execution_options(synchronize_session=False)
    )
    s.commit()
    return outcome if res.rowcount == 1 else GONE  # type: ignore[attr-defined]


def mark_dispatched(s: Session, id: str) -> None:
    """ "run job X" was sent for this queued job."""
    s.execute(
        update(Job)
        .where(Job.id == id, Job.state == QUEUED)
        .values(dispatched_at=utcnow())
        .execution_options(synchronize_session=False)
    )
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
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == QUEUED, Job.dispatched_at.is_(None))
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        s.commit()
        if res.rowcount == 1:  # type: ignore[attr-defined]
            out.append((job_id, dict(payload or {})))
    return out


def undispatch(s: Session, id: str) -> None:
    s.execute(
        update(Job)
        .where(Job.id == id, Job.state == QUEUED)
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    )
    s.commit()
