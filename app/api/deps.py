"""Dependencies for the routes, as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from app.api.errors import InputError
from app.config import Settings
from app.names import TASK_NAME_RE, validate_task_name
from app.serving.hub import Hub
from app.store import DatasetFiles, Store


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_hub(request: Request) -> Hub:
    return request.app.state.hub


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_datasets(request: Request) -> DatasetFiles:
    return request.app.state.datasets


def valid_task_name(
    task: Annotated[str, Path(description="task name", json_schema_extra={"pattern": TASK_NAME_RE})],
) -> str:
    try:
        validate_task_name(task)
    except ValueError as e:
        raise InputError.at(["path", "task"], str(e)) from None
    return task


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
HubDep = Annotated[Hub, Depends(get_hub)]
SessionDep = Annotated[Session, Depends(get_session)]
TaskNameDep = Annotated[str, Depends(valid_task_name)]
StoreDep = Annotated[Store, Depends(get_store)]
DatasetFilesDep = Annotated[DatasetFiles, Depends(get_datasets)]
