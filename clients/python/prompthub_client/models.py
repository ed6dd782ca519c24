"""Typed results: plain dataclasses made from the server's JSON (unknown fields are ignored, so a
newer server does not break an older client)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T")


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _build(cls: type[T], doc: dict[str, Any], **override: Any) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in doc.items() if k in names}
    for k in ("created_at", "updated_at", "started_at", "finished_at"):
        if k in values:
            values[k] = _time(values[k])
    values.update(override)
    return cls(**values)


@dataclass
class Prediction:
    task: str
    version: int
    predictions: list[dict[str, Any]]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Prediction:
        return _build(cls, doc)


@dataclass
class Version:
    version: int
    sha256: str
    size_bytes: int
    spec: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    created_at: datetime | None = None
    active: bool = False

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Version:
        return _build(cls, doc)


@dataclass
class Task:
    name: str
    task_type: str
    labels: list[Any] = field(default_factory=list)
    active_version: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    versions: list[Version] = field(default_factory=list)  # filled by Client.task(name)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Task:
        return _build(cls, doc, versions=[Version.from_json(v) for v in doc.get("versions") or []])


@dataclass
class Dataset:
    id: str
    filename: str
    rows: int
    columns: list[Any] = field(default_factory=list)
    task_type: str | None = None
    sha256: str = ""
    size_bytes: int = 0
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Dataset:
        return _build(cls, doc)


TERMINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass
class JobInfo:
    id: str
    state: str
    kind: str = "single"
    task_names: list[str] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobInfo:
        return _build(cls, doc)
