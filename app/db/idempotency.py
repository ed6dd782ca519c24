"""Idempotency keys of POST /train: (owner, key) -> the job the first request created.

One row per (owner, key), enforced by a unique constraint, so two requests racing with the same key
create one job: the loser's insert fails, its job is rolled back with it, and it answers with the
winner's job. A key expires after a while (PROMPTHUB_IDEMPOTENCY_TTL_S); an expired row is
deleted when its key comes again, and `purge_expired` clears the rest.

Functions that change something commit before they return, except `record`, which runs inside the
caller's transaction (db.jobs.create_job's guard). Reads do not commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import IdempotencyKey, Job, utcnow


def lookup(
    s: Session, owner: str, key: str, now: datetime | None = None
) -> tuple[IdempotencyKey, Job] | None:
    """The live record of `key` for `owner` and its job; an expired record is deleted (and None)."""
    now = now or utcnow()
    row = s.scalars(
        select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
    ).first()
    if row is None:
        return None
    job = s.get(Job, row.job_id, populate_existing=True)
    if row.expires_at <= now or job is None:
        s.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row.id))
        s.commit()
        return None
    return row, job


def record(
    s: Session, *, owner: str, key: str, request_sha256: str, job_id: str, expires_at: datetime
) -> None:
    """Add the record in the caller's transaction and flush it: IntegrityError when another request
    recorded the same (owner, key) first."""
    s.add(
        IdempotencyKey(
            owner=owner,
            key=key,
            request_sha256=request_sha256,
            job_id=job_id,
            created_at=utcnow(),
            expires_at=expires_at,
        )
    )
    s.flush()


def purge_expired(s: Session, now: datetime | None = None) -> int:
    res = s.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= (now or utcnow())))
    s.commit()
    return int(res.rowcount or 0)
