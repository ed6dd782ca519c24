"""Tasks and their versions: list, inspect, activate (or roll back), delete."""

from __future__ import annotations

from fastapi import APIRouter, Path
from sqlalchemy.orm import Session

from app import versions
from app.api.auth import AdminTask, PrincipalDep, ReadTask
from app.api.deps import HubDep, SessionDep, StoreDep, TaskNameDep
from app.api.errors import ApiError
from app.api.schemas import TaskDetail, TaskOut, VersionOut
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


@router.get("", response_model=list[TaskOut])
def list_tasks(principal: PrincipalDep, s: SessionDep) -> list[TaskOut]:
    return [TaskOut.model_validate(t) for t in db.list_tasks(s) if principal.allows_task(t.name)]


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
