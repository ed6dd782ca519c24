"""Uploaded datasets (the rows; the files are in app.store).

Functions that change something commit before they return, so a caller never holds a half-done
change. Reads do not commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.db.models import QUEUED, RUNNING, Dataset, Job, new_id


def create_dataset(
    s: Session,
    *,
    filename: str,
    task_type: str | None,
    rows: int,
    columns: Sequence[str],
    path: str,
    sha256: str,
    size_bytes: int,
    id: str | None = None,
) -> Dataset:
    ds = Dataset(
        id=id or new_id(),
        filename=filename,
        task_type=task_type,
        rows=rows,
        columns=list(columns),
        path=path,
        sha256=sha256,
        size_bytes=size_bytes,
    )
    s.add(ds)
    s.commit()
    return ds


def get_dataset(s: Session, id: str) -> Dataset | None:
    return s.get(Dataset, id)


def list_datasets(s: Session, *, limit: int | None = None) -> list[Dataset]:
    """Oldest first."""
    stmt = select(Dataset).order_by(Dataset.created_at, Dataset.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(s.scalars(stmt))


def page_datasets(
    s: Session,
    *,
    after: tuple[datetime, str] | None = None,
    limit: int = 100,
    task_type: str | None = None,
    filename_prefix: str | None = None,
) -> list[Dataset]:
    """Oldest first (created_at, then id: a total order), the `limit` datasets after the
    (created_at, id) key `after`; uploads made meanwhile sort after every key handed out."""
    stmt = select(Dataset).order_by(Dataset.created_at, Dataset.id).limit(limit)
    if after is not None:
        at, id_ = after
        stmt = stmt.where(or_(Dataset.created_at > at, and_(Dataset.created_at == at, Dataset.id > id_)))
    if task_type is not None:
        stmt = stmt.where(Dataset.task_type == task_type)
    if filename_prefix:
        stmt = stmt.where(Dataset.filename.startswith(filename_prefix, autoescape=True))
    return list(s.scalars(stmt))


def _split_ids(payload: dict | None) -> set[str]:
    found: set[str] = set()
    for t in [payload or {}, *((payload or {}).get("tasks") or [])]:
        if not isinstance(t, dict):
            continue
        for part in ("train", "eval"):
            split = t.get(part)
            if isinstance(split, dict) and split.get("dataset_id"):
                found.add(str(split["dataset_id"]))
    return found


def datasets_in_use(s: Session) -> dict[str, list[str]]:
    """dataset id -> ids of the queued or running jobs that refer to it."""
    used: dict[str, list[str]] = {}
    for job_id, payload in s.execute(select(Job.id, Job.payload).where(Job.state.in_((QUEUED, RUNNING)))):
        for ds in _split_ids(payload):
            used.setdefault(ds, []).append(job_id)
    return used


def expired_datasets(s: Session, before: datetime) -> list[Dataset]:
    """Datasets uploaded before `before` that no queued or running job refers to."""
    used = datasets_in_use(s)
    rows = s.scalars(select(Dataset).where(Dataset.created_at < before).order_by(Dataset.created_at))
    return [d for d in rows if d.id not in used]


def path_shared(s: Session, path: str) -> bool:
    """Whether a dataset row refers to the file `path` (identical uploads share one file)."""
    return bool(s.scalar(select(func.count()).select_from(Dataset).where(Dataset.path == path)))


def drop_dataset(s: Session, id: str) -> bool:
    row = s.get(Dataset, id)
    if row is None:
        return False
    s.delete(row)
    s.commit()
    return True
