"""Tasks and their versions (SQL only; names are validated by the caller, see app.names).

Functions that change something commit before they return, so a caller never holds a half-done
change. Reads do not commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.errors import Conflict, NotFound
from app.db.models import Task, TaskVersion, utcnow


def get_task(s: Session, name: str) -> Task | None:
    return s.get(Task, name)


def list_tasks(s: Session) -> list[Task]:
    return list(s.scalars(select(Task).order_by(Task.name)))


def page_tasks(
    s: Session,
    *,
    after: str | None = None,
    limit: int = 100,
    task_type: str | None = None,
    name_prefix: str | None = None,
) -> list[Task]:
    """By name (unique: a total order), the `limit` tasks whose name sorts after `after`."""
    stmt = select(Task).order_by(Task.name).limit(limit)
    if after is not None:
        stmt = stmt.where(Task.name > after)
    if task_type is not None:
        stmt = stmt.where(Task.task_type == task_type)
    if name_prefix:
        stmt = stmt.where(Task.name.startswith(name_prefix, autoescape=True))
    return list(s.scalars(stmt))


def get_versions(s: Session, name: str) -> list[TaskVersion]:
    stmt = select(TaskVersion).where(TaskVersion.task_name == name).order_by(TaskVersion.version)
    return list(s.scalars(stmt))


def get_version(s: Session, name: str, version: int) -> TaskVersion | None:
    stmt = select(TaskVersion).where(TaskVersion.task_name == name, TaskVersion.version == version)
    return s.scalars(stmt).first()


def resolve_version(s: Session, name: str, version: int | None = None) -> tuple[bool, int | None, str | None]:
    """(task exists, version number, sha256) of a task's `version` (its active one if None), in
    one query that reads only those columns: the per-request path of the hub."""
    wanted = Task.active_version if version is None else version
    stmt = (
        select(Task.name, TaskVersion.version, TaskVersion.sha256)
        .select_from(Task)
        .outerjoin(TaskVersion, (TaskVersion.task_name == Task.name) & (TaskVersion.version == wanted))
        .where(Task.name == name)
    )
    row = s.execute(stmt).first()
    if row is None:
        return False, None, None
    return True, row[1], row[2]


def get_active_version(s: Session, name: str) -> TaskVersion | None:
    task = get_task(s, name)
    if task is None or task.active_version is None:
        return None
    return get_version(s, name, task.active_version)


def max_version(s: Session, name: str) -> int:
    return s.scalar(select(func.max(TaskVersion.version)).where(TaskVersion.task_name == name)) or 0


def check_task_type(task: Task | None, task_type: str) -> None:
    """A task keeps the task type it was made with: Conflict when `task` exists with another."""
    if task is not None and task.task_type != task_type:
        raise Conflict(f"task {task.name!r} is a {task.task_type} task; it cannot take a {task_type} version")


def add_version(
    s: Session,
    *,
    name: str,
    task_type: str,
    labels: Sequence[str] | None,
    file: str,
    sha256: str,
    size_bytes: int,
    spec: dict[str, Any],
    metrics: dict[str, Any] | None,
    training: dict[str, Any] | None,
    source: str | None,
    activate: bool = True,
    version: int | None = None,
    description: str | None = None,
    guard: Callable[[Session], None] | None = None,
) -> TaskVersion:
    """Register a version whose file is already in the store (file first, then the row).

    Creates the task when it is new. `version` defaults to the highest so far + 1. Raises Conflict
    when the version exists or the task has another task type. `guard(s)` runs in the same
    transaction once the row is written, before the commit; what it raises rolls the row back.
    """
    task = get_task(s, name) or _create_task(s, name, task_type, labels, description, source)
    check_task_type(task, task_type)
    if version is None:
        version = max_version(s, name) + 1
    elif version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    elif get_version(s, name, version) is not None:
        raise Conflict(f"task {name!r} already has a version {version}")
    row = TaskVersion(
        task_name=name,
        version=version,
        file=file,
        sha256=sha256,
        size_bytes=size_bytes,
        spec=dict(spec),
        metrics=dict(metrics or {}),
        training=dict(training or {}),
        source=source,
    )
    s.add(row)
    try:
        s.flush()
    except IntegrityError as e:
        s.rollback()
        raise Conflict(f"task {name!r} already has a version {version}") from e
    if guard is not None:
        try:
            guard(s)
        except BaseException:
            s.rollback()
            raise
    if activate or task.active_version is None:
        task.active_version = version
        task.labels = list(labels or [])
        task.updated_at = utcnow()
    s.commit()
    return row


def _create_task(
    s: Session,
    name: str,
    task_type: str,
    labels: Sequence[str] | None,
    description: str | None,
    source: str | None,
) -> Task:
    """A new task row, flushed at once; when another writer created it meanwhile, theirs."""
    task = Task(
        name=name, task_type=task_type, labels=list(labels or []), description=description, source=source
    )
    s.add(task)
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        task = get_task(s, name)  # type: ignore[assignment]
        if task is None:
            raise
    return task


def activate_version(s: Session, name: str, version: int) -> Task:
    task = get_task(s, name)
    if task is None:
        raise NotFound(f"no task named {name!r}")
    row = get_version(s, name, version)
    if row is None:
        raise NotFound(f"task {name!r} has no version {version}")
    task.active_version = version
    task.labels = list((row.spec or {}).get("labels") or task.labels or [])
    task.updated_at = utcnow()
    s.commit()
    return task


def delete_task(s: Session, name: str) -> list[str]:
    """Delete the task and its versions; returns their files (relative to the store root) for the
    caller to remove from the store after this commit."""
    task = get_task(s, name)
    if task is None:
        raise NotFound(f"no task named {name!r}")
    files = [v.file for v in get_versions(s, name)]
    s.delete(task)
    s.commit()
    return files


def delete_version(s: Session, name: str, version: int) -> str:
    """Delete one version row (a version that is not active); returns its file."""
    row = get_version(s, name, version)
    if row is None:
        raise NotFound(f"task {name!r} has no version {version}")
    task = get_task(s, name)
    if task is not None and task.active_version == version:
        raise Conflict(f"version {version} of task {name!r} is active; activate another version first")
    s.delete(row)
    s.commit()
    return row.file


def all_versions(s: Session) -> list[TaskVersion]:
    """Every version of every task, by task and number."""
    return list(s.scalars(select(TaskVersion).order_by(TaskVersion.task_name, TaskVersion.version)))


def drop_version_row(s: Session, name: str, version: int) -> None:
    """Delete a version row whatever its state (its file is gone); the task's active version may then
    point nowhere until the caller activates another."""
    row = get_version(s, name, version)
    if row is not None:
        s.delete(row)
        s.commit()


def drop_task_row(s: Session, name: str) -> None:
    task = get_task(s, name)
    if task is not None:
        s.delete(task)
        s.commit()


def set_version_file(s: Session, name: str, version: int, file: str) -> bool:
    row = get_version(s, name, version)
    if row is None:
        return False
    row.file = file
    s.commit()
    return True
