"""Dependencies for the routes, as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from app.api.errors import InputError
from app.config import Settings
from app.serving.hub import Hub


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_hub(request: Request) -> Hub:
    return request.app.state.hub


def get_session(request: Request) -> Iterator[Session]:
    hub: Hub = request.app.state.hub
    with hub.sessionmaker() as session:
        yield session


def valid_task_name(task: Annotated[str, Path(description="task name")]) -> str:
    from app.db.repo import validate_task_name

    try:
        validate_task_name(task)
    except ValueError as e:
        raise InputError.at(["path", "task"], str(e)) from None
    return task


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
HubDep = Annotated[Hub, Depends(get_hub)]
SessionDep = Annotated[Session, Depends(get_session)]
TaskNameDep = Annotated[str, Depends(valid_task_name)]
