"""Tasks and their versions: list, inspect, activate (or roll back), delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.orm import Session

from app import versions
from app.api.auth import AdminTask, PrincipalDep, ReadTask
from app.api.deps import HubDep, SessionDep, StoreDep, TaskNameDep
from app.api.errors import ApiError
from app.api.pagination import (
    DEFAULT_LIMIT,
    PAGE_RESPONSES,
    CursorQuery,
    LimitQuery,
    decode_cursor,
    fill_page,
    set_next,
)
from app.api.schemas import TaskDetail, TaskOut, TaskType, VersionOut
from app.db import tasks as db

router = APIRouter(prefix="/tasks", tags=["tasks"])


def task_detail(s: Session, name: str) -> TaskDetail:
    task = db.get_task(s, name)
    if task is None:
        raise ApiError(404, f"task {name!r} not found", code="task_not_found")
    versions = [
        VersionOut.model_validate(v).model_copy(update={"active": v.version == task.active_version})
        for v in db.get_versions(s, name)
    ]
    return TaskDetail(**TaskOut.model_validate(task).model_dump(), versions=versions)


@router.get("", response_model=list[TaskOut], responses=PAGE_RESPONSES)
def list_tasks(
    principal: PrincipalDep,
    s: SessionDep,
    request: Request,
    response: Response,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    task_type: Annotated[TaskType | None, Query(description="only tasks of this type")] = None,
    name_prefix: Annotated[
        str | None, Query(max_length=64, description="only tasks whose name starts with this")
    ] = None,
) -> list[TaskOut]:
    """Tasks by name, a page at a time: the next page's cursor is in `X-Next-Cursor` (and `Link`),
    absent on the last page."""
    after = decode_cursor(cursor, [str])
    rows, next_key = fill_page(
        lambda a, n: db.page_tasks(
            s, after=a[0] if a else None, limit=n, task_type=task_type, name_prefix=name_prefix
        ),
        lambda t: (t.name,),
        lambda t: principal.allows_task(t.name),
        after,
        limit,
    )
    set_next(response, request, next_key)
    return [TaskOut.model_validate(t) for t in rows]


@router.get("/{task}", response_model=TaskDetail)
def get_task(_: ReadTask, task: TaskNameDep, s: SessionDep) -> TaskDetail:
    return task_detail(s, task)


@router.post("/{task}/versions/{version}/activate", response_model=TaskDetail)
def activate(
    _: AdminTask, task: TaskNameDep, s: SessionDep, version: int = Path(ge=1, le=2**31 - 1)
) -> TaskDetail:
    versions.activate(s, task, version)
    return task_detail(s, task)


@router.delete("/{task}")
def delete_task(_: AdminTask, task: TaskNameDep, s: SessionDep, store: StoreDep, hub: HubDep) -> dict:
    n = versions.delete_task(s, store, task)  # the rows first: from now on nobody is served this task
    hub.cache.discard_task(task)
    return {"deleted": task, "versions": n}
