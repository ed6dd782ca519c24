"""Pydantic models at the API edge only; the engine and serving layers use plain dataclasses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TaskType = Literal["classification", "token-classification", "question-answering"]


# ---------------------------------------------------------------------- predict
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[str | dict[str, Any]] = Field(
        min_length=1,
        description="classification: text or {text, text_pair}; token-classification: text or "
        "{tokens} or {text}; question-answering: {question, context}",
    )
    version: int | None = Field(None, ge=1, description="a version other than the active one")


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


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["p-tuning-v2", "prompt-tuning"] = "p-tuning-v2"
    prefix_length: int = Field(16, ge=1, le=512)
    reparameterize: bool = False
    prefix_init: Literal["random", "tokens"] = Field(
        "random",
        description="P-Tuning v2 flat prefix start: 'tokens' (each layer's keys/values of real tokens "
        "through the frozen encoder) or 'random'",
    )
    layers: str | list[int] | None = Field(None, description="'all', 'lower-half', 'last:N', '0-2,5', [0, 1]")
    head: Literal["linear", "verbalizer"] = "linear"
    label_words: list[str] | None = Field(None, min_length=1)
    lr: float = Field(1e-2, gt=0, le=1.0)
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(16, ge=1, le=512)
    max_length: int = Field(128, ge=8, le=4096)
    doc_stride: int = Field(64, ge=1, le=4095)
    seed: int = Field(42, ge=0, le=2**31 - 1)
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    holdout_fraction: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="with no eval data, this seeded share of train is held out for metrics",
    )

    @model_validator(mode="after")
    def _check(self) -> Hyperparameters:
        if isinstance(self.layers, list) and (not self.layers or any(i < 0 for i in self.layers)):
            raise ValueError("layers: give non-negative layer indices")
        return self


class TrainTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    task_type: TaskType
    train: DataSource
    eval: DataSource | None = None
    labels: list[str] | None = Field(None, min_length=1)


class TrainRequest(TrainTask):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    init_from: str | None = None


class MultiTrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TrainTask] = Field(min_length=1, max_length=32)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    per_task_epochs: int = Field(0, ge=0, le=100)


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
