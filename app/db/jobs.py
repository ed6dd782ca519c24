"""Training job records: create, read and list, cancel, heartbeat and progress, finish. Claiming,
releasing and recovering jobs (the queue) is app.db.job_queue.

Functions that change something commit before they return, so a caller never holds a half-done
change. Reads do not commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.errors import NotFound, TooManyJobs
from app.db.models import (
    CANCELLED,
    JOB_KINDS,
    JOB_STATES,
    QUEUED,
    RUNNING,
    TERMINAL_STATES,
    Job,
    new_id,
    utcnow,
)


def update_jobs(s: Session, where: Sequence[Any], **values: Any) -> Any:
    """UPDATE the jobs matching every condition of `where` (a bulk update: the session's loaded
    objects are not synchronised; the caller commits). The result's rowcount is the rows changed."""
    return s.execute(update(Job).where(*where).values(**values).execution_options(synchronize_session=False))


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
    update_jobs(
        s,
        [Job.id == id, Job.state == QUEUED],
        state=CANCELLED,
        finished_at=now,
        cancel_requested=True,
        error=None,
    )
    update_jobs(s, [Job.id == id, Job.state == RUNNING], cancel_requested=True)
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
    update_jobs(
        s,
        [Job.id.in_(ids), Job.state == QUEUED],
        state=CANCELLED,
        finished_at=now,
        cancel_requested=True,
        error=None,
    )
    update_jobs(s, [Job.id.in_(ids), Job.state == RUNNING], cancel_requested=True)
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
    res = update_jobs(s, cond, **values)
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
    update_jobs(s, cond, **values)
    s.commit()
    return _get_job_or_raise(s, id)
