"""Uploaded datasets (the rows; the files are in app.store).

Functions that change something commit before they return, so a caller never holds a half-done
change. Reads do not commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Dataset, new_id


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


def list_datasets(s: Session) -> list[Dataset]:
    return list(s.scalars(select(Dataset)))


def drop_dataset(s: Session, id: str) -> bool:
    row = s.get(Dataset, id)
    if row is None:
        return False
    s.delete(row)
    s.commit()
    return True
