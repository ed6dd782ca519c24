"""Pydantic models at the API edge only; the engine and serving layers use plain dataclasses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from app.engine.options import OPTIONS, Option
from app.engine.tasks import TASK_TYPES

TaskType = Literal[TASK_TYPES]  # type: ignore[valid-type]


# ---------------------------------------------------------------------- predict
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[str | dict[str, Any]] = Field(
        min_length=1,
        description="classification: text or {text, text_pair}; token-classification: text or "
        "{tokens} or {text}; question-answering: {question, context}",
    )
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="a version other than the active one")


class PredictResponse(BaseModel):
    task: str
    version: int
    predictions: list[dict[str, Any]]


# ---------------------------------------------------------------------- train
class RecordsSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)


class DatasetSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: str = Field(min_length=1, max_length=64)


DataSource = RecordsSource | DatasetSource


class _HyperparametersBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _check(self) -> _HyperparametersBase:
        layers = getattr(self, "layers", None)
        if isinstance(layers, list) and (not layers or any(i < 0 for i in layers)):
            raise ValueError("layers: give non-negative layer indices")
        return self


def _hyperparameter_field(o: Option) -> tuple[Any, Any]:
    """(annotation, Field) of one row of the engine's options table."""
    kinds: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str, "layers": str | list[int]}
    if o.kind == "words":
        return list[str] | None, Field(o.default, min_length=1, description=o.help)
    choices = o.api_choices or o.choices
    annotation = Literal[choices] if choices else kinds[o.kind]  # type: ignore[valid-type]
    if o.nullable:
        annotation = annotation | None
    return annotation, Field(o.default, ge=o.ge, gt=o.gt, le=o.le, description=o.help)


#: training hyperparameters, one field per row of app.engine.options.OPTIONS
Hyperparameters = create_model(
    "Hyperparameters",
    __base__=_HyperparametersBase,
    __module__=__name__,
    **{o.name: _hyperparameter_field(o) for o in OPTIONS if o.api},
)


class TrainTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    task_type: TaskType
    train: DataSource
    eval: DataSource | None = None
    labels: list[str] | None = Field(None, min_length=1)


DeviceClass = Literal["cpu", "gpu"]
_DEVICE_CLASS_HELP = (
    "the workers that may run the job (PROMPTHUB_EXECUTOR=celery: the queue prompthub-cpu or "
    "prompthub-gpu); the local executor's workers take every job"
)


class TrainRequest(TrainTask):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    init_from: str | None = None
    device_class: DeviceClass = Field("cpu", description=_DEVICE_CLASS_HELP)


class MultiTrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TrainTask] = Field(min_length=1, max_length=32)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    per_task_epochs: int = Field(0, ge=0, le=100)
    device_class: DeviceClass = Field("cpu", description=_DEVICE_CLASS_HELP)


class JobAccepted(BaseModel):
    job_id: str
    state: str


# ---------------------------------------------------------------------- jobs, tasks, datasets
class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    state: str
    kind: str
    task_names: list[Any]
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class WorkerOut(BaseModel):
    """A training worker as its heartbeats describe it (GET /workers)."""

    id: str
    host: str
    pid: int
    executor: str
    device_class: str
    device: str
    queue: str | None = None
    started_at: datetime
    heartbeat_at: datetime
    alive: bool = Field(
        description="its heartbeat is younger than PROMPTHUB_JOB_STALE_S (and, on the API's host, its process exists)"
    )
    job_id: str | None = Field(
        None, description="the job it runs now (null: idle, or a job the key may not see)"
    )
    job_tasks: list[str] | None = None
    job_progress: dict[str, Any] | None = None


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    sha256: str
    size_bytes: int
    spec: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    training: dict[str, Any] = {}
    source: str | None = None
    created_at: datetime | None = None
    active: bool = False


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    task_type: str
    labels: list[Any]
    active_version: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class TaskDetail(TaskOut):
    versions: list[VersionOut]


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    task_type: str | None = None
    rows: int
    columns: list[Any]
    sha256: str
    size_bytes: int
    created_at: datetime | None = None
