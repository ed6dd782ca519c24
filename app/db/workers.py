"""Training workers' own rows: registered at start, heartbeated, removed on a clean stop.

`GET /workers` reads them; the Celery executor also uses them to tell whether the worker that owns a
running job is alive. Functions that change something commit before they return.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db.models import WorkerRow, utcnow


def register_worker(
    s: Session,
    *,
    id: str,
    host: str,
    pid: int,
    executor: str,
    device_class: str,
    device: str,
    queue: str | None = None,
) -> WorkerRow:
    """Insert (or refresh, when the id is already there) this worker's row."""
    now = utcnow()
    row = s.get(WorkerRow, id)
    if row is None:
        row = WorkerRow(id=id, started_at=now)
        s.add(row)
    row.host, row.pid, row.executor = host, pid, executor
    row.device_class, row.device, row.queue = device_class, device, queue
    row.job_id, row.heartbeat_at = None, now
    s.commit()
    return row


def worker_heartbeat(s: Session, id: str, job_id: str | None) -> bool:
    """Refresh the heartbeat and the current job; False when the row is gone (pruned as stale while
    this worker was stalled): the caller registers again."""
    res = s.execute(
        update(WorkerRow)
        .where(WorkerRow.id == id)
        .values(heartbeat_at=utcnow(), job_id=job_id)
        .execution_options(synchronize_session=False)
    )
    s.commit()
    return res.rowcount == 1  # type: ignore[attr-defined]


def remove_worker(s: Session, id: str) -> None:
    s.execute(delete(WorkerRow).where(WorkerRow.id == id).execution_options(synchronize_session=False))
    s.commit()


def get_worker(s: Session, id: str) -> WorkerRow | None:
    return s.get(WorkerRow, id, populate_existing=True)


def is_stale(row: WorkerRow, stale_after_s: float, now: datetime | None = None) -> bool:
    return row.heartbeat_at < (now or utcnow()) - timedelta(seconds=stale_after_s)


def list_workers(s: Session, *, stale_after_s: float, include_stale: bool = False) -> list[WorkerRow]:
    """Workers by start time; those whose heartbeat is older than `stale_after_s` only with
    `include_stale`."""
    stmt = select(WorkerRow).order_by(WorkerRow.started_at, WorkerRow.id)
    if not include_stale:
        stmt = stmt.where(WorkerRow.heartbeat_at >= utcnow() - timedelta(seconds=stale_after_s))
    return list(s.scalars(stmt.execution_options(populate_existing=True)))


def prune_workers(s: Session, older_than_s: float) -> int:
    """Delete the rows of workers silent for `older_than_s` seconds (killed, or their host lost);
    returns how many."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    res = s.execute(
        delete(WorkerRow).where(WorkerRow.heartbeat_at < cutoff).execution_options(synchronize_session=False)
    )
    s.commit()
    return int(res.rowcount or 0)  # type: ignore[attr-defined]
