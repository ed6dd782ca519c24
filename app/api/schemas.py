"""Pydantic models at the API edge only; the engine and serving layers use plain dataclasses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from app.engine.options import OPTIONS, Option
from app.engine.search import MAX_TRIALS
from app.engine.tasks import TASK_TYPES

TaskType = Literal[TASK_TYPES]  # type: ignore[valid-type]


# ---------------------------------------------------------------------- predict
Record = dict[str, Any]
NativeInputs = Annotated[list[str | Record], Field(min_length=1)]


class PredictParameters(BaseModel):
    """Hugging Face inference parameters (app.api.hf); sending any (even `{}`) asks for the Hugging
    Face response shape. A parameter that does not apply to the task's type is ignored."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="classification: the k best labels per input (absent: the best one; null: all)",
    )
    truncation: bool | None = Field(
        None,
        description="true: cut over-long inputs; false: refuse them (422); absent: the server's "
        "PROMPTHUB_TEXT_OVERFLOW",
    )
    aggregation_strategy: Literal["none", "simple", "first", "max", "average"] = Field(
        "simple",
        description="token-classification: `none` (one entry per tagged word), `simple` and `first` "
        "(words grouped into entities; each word's tag is read at its first word piece, so the two "
        "agree); `max` and `average` need per-piece scores and are refused",
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | NativeInputs | Record = Field(
        description="classification/regression: text or {text, text_pair}; token-classification: text "
        "or {tokens} or {text}; question-answering: {question, context}. A list is a batch; a single "
        "string or object (the Hugging Face shape) is one input and is answered in the Hugging Face shape",
    )
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="a version other than the active one")
    parameters: PredictParameters | None = Field(
        None, description="Hugging Face parameters; when sent, the answer has the Hugging Face shape"
    )


class ClassificationPrediction(BaseModel):
    label: str
    score: float = Field(description="the probability of `label`")
    scores: dict[str, float] = Field(description="the probability of every label")


class Entity(BaseModel):
    type: str
    start: int = Field(description="character offset of the first character")
    end: int = Field(description="character offset after the last character")
    text: str


class TokenClassificationPrediction(BaseModel):
    tokens: list[str]
    tags: list[str] = Field(description="one tag per token (word)")
    entities: list[Entity]
    truncated: bool = Field(description="words past the model's length were tagged without being read")
    scores: list[float | None] = Field(
        default_factory=list, description="probability of each word's tag (null: truncated)"
    )
    offsets: list[list[int]] = Field(default_factory=list, description="[start, end) of each word")


class QuestionAnsweringPrediction(BaseModel):
    id: str
    answer: str = Field(description="the answer span, empty for no answer")
    start: int
    end: int
    score: float


class RegressionPrediction(BaseModel):
    score: float


#: one prediction, by the task's type (discriminated by its fields)
Prediction = (
    ClassificationPrediction
    | TokenClassificationPrediction
    | QuestionAnsweringPrediction
    | RegressionPrediction
)


def typed_prediction(p: dict[str, Any]) -> Prediction:
    if "tags" in p:
        return TokenClassificationPrediction.model_validate(p)
    if "answer" in p:
        return QuestionAnsweringPrediction.model_validate(p)
    if "label" in p:
        return ClassificationPrediction.model_validate(p)
    return RegressionPrediction.model_validate(p)


class PredictResponse(BaseModel):
    task: str
    version: int
    predictions: list[Prediction]


class HFLabelScore(BaseModel):
    """text-classification pipeline item (a regression task answers one, label LABEL_0)."""

    label: str
    score: float


class HFEntity(BaseModel):
    """token-classification pipeline item: `entity_group` when aggregated, `entity` and `index` (the
    word's 1-based position) with aggregation_strategy=none."""

    entity_group: str | None = None
    entity: str | None = None
    index: int | None = None
    score: float | None
    word: str
    start: int
    end: int


class HFAnswer(BaseModel):
    """question-answering pipeline item."""

    answer: str
    score: float
    start: int
    end: int


#: the Hugging Face response: a single input's result, or a list of them for a list
HFResponse = list[HFLabelScore | HFEntity | list[HFLabelScore] | list[HFEntity]] | HFAnswer | list[HFAnswer]


class ErrorResponse(BaseModel):
    """Every error: the message and a stable code (docs/contracts.md)."""

    detail: str
    code: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """422: each problem with its location in the request."""

    detail: list[ValidationIssue]
    code: str = "invalid_input"


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
    # an option whose default depends on the task type stays unset (None) until the engine
    # builds the run (app.engine.options.TASK_DEFAULTS)
    default = None if o.task_defaults else o.default
    if o.nullable or default is None:
        annotation = annotation | None
    return annotation, Field(default, ge=o.ge, gt=o.gt, le=o.le, description=o.help)


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
    "the workers that may run the job (PROMPTHUB_EXECUTOR=celery: the queue prefix-cpu or "
    "prefix-gpu); the local executor's workers take every job"
)


#: what a successful job does with the version it made (issue 15: safe promotion)
Activate = Literal["always", "never", "if_better"]
ACTIVATE_HELP = (
    "always (default): the new version is served at once; never: it is kept, not activated (activate "
    "it later); if_better: the worker evaluates the active version on the new job's eval data and "
    "activates the new one only if its primary metric is strictly better (a tie keeps the active one). A task's first version "
    "is activated whatever this says. The job's `promotion` says what happened and why."
)


class SearchRequest(BaseModel):
    """A built-in hyperparameter search (app.engine.search): the best of `trials` runs on a
    held-out split is published, with the search log in its metadata."""

    model_config = ConfigDict(extra="forbid")
    trials: int = Field(ge=1, le=MAX_TRIALS)
    metric: str | None = Field(None, max_length=32, description="default: the task type's primary metric")
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400)


class TrainRequest(TrainTask):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    init_from: str | None = None
    activate: Activate = Field("always", description=ACTIVATE_HELP)
    search: SearchRequest | None = None
    device_class: DeviceClass = Field("cpu", description=_DEVICE_CLASS_HELP)


class MultiTrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TrainTask] = Field(min_length=1, max_length=32)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    per_task_epochs: int = Field(0, ge=0, le=100)
    activate: Activate = Field("always", description=ACTIVATE_HELP)
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
    #: task -> {"promoted": bool, "reason": str, ...}: what `activate` decided for its new version
    promotion: dict[str, Any] | None = None
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


# ---------------------------------------------------------------------- embeddings
class EmbedRequest(BaseModel):
    """POST /embed, in the shape of Hugging Face's text-embeddings-inference (TEI)."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(description="a text or a list of texts")
    normalize: bool = Field(True, description="L2-normalise each vector (as sentence-transformers does)")
    truncate: bool | None = Field(
        None, description="cut texts longer than the model takes (default: the server's text_overflow)"
    )
    task: str | None = Field(
        None, description="embed through this task's prefix (task-conditioned embeddings); none: the backbone"
    )
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="the task's version (default: active)")


class OpenAIEmbeddingRequest(BaseModel):
    """POST /v1/embeddings, as OpenAI's API takes it (text inputs only)."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(description="a text or a list of texts (token-id arrays are not accepted)")
    model: str = Field(
        min_length=1, max_length=200, description="the backbone's name (plain embeddings) or a task's name"
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes"
    )
    dimensions: int | None = Field(None, ge=1, description="must equal the backbone's hidden size if given")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIEmbeddingUsage


# ---------------------------------------------------------------------- PEFT adapters
class PeftImported(BaseModel):
    task: str
    version: int
    sha256: str
    prefix_length: int
    position_offset: int = Field(
        description="where the task's token positions start (PEFT's: the prefix length)"
    )
