"""POST /train: validate everything a worker would trip on, then queue a job (202 + Location)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from app.api.auth import Train, check_tasks
from app.api.deps import SessionDep, SettingsDep
from app.api.errors import ApiError, InputError, Loc, data_error
from app.api.schemas import (
    DatasetSource,
    Hyperparameters,
    JobAccepted,
    MultiTrainRequest,
    TrainRequest,
    TrainTask,
)
from app.db import datasets as db_datasets
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.engine import data as D
from app.names import validate_task_name

router = APIRouter(tags=["train"])

_EXAMPLE = {
    "task": "sentiment",
    "task_type": "classification",
    "train": {"records": [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}]},
    "hyperparameters": {"epochs": 3, "prefix_length": 16},
}


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise InputError(
            [
                {"loc": ["body", *e_["loc"]], "msg": e_["msg"], "type": e_["type"]}
                for e_ in e.errors(include_url=False)
            ]
        ) from None


def _check_name(name: str, loc: Loc) -> None:
    try:
        validate_task_name(name)
    except ValueError as e:
        raise InputError.at(loc, str(e)) from None


def _check_labels(examples: list[D.Example], labels: list[str], loc: Loc) -> None:
    known = set(labels)
    for i, ex in enumerate(examples):
        if isinstance(ex, D.ClassificationExample) and ex.label is not None and ex.label not in known:
            err = D.DataError(
                f"label {ex.label!r} is not one of the task's labels", line=i + 1, field="label"
            )
            raise data_error(err, loc)
        if isinstance(ex, D.TokenExample) and ex.tags:
            bad = next((t for t in ex.tags if t not in known), None)
            if bad is not None:
                err = D.DataError(f"tag {bad!r} is not one of the task's labels", line=i + 1, field="tags")
                raise data_error(err, loc)


def _check_task(s: Session, t: TrainTask, hp: Hyperparameters, loc: list[str | int], max_rows: int) -> None:
    _check_name(t.task, [*loc, "task"])
    existing = db_tasks.get_task(s, t.task)
    if existing is not None and existing.task_type != t.task_type:
        raise ApiError(
            409, f"task {t.task!r} is a {existing.task_type} task; it cannot be trained as {t.task_type}"
        )
    for part in ("train", "eval"):
        source = getattr(t, part)
        if source is None:
            continue
        if isinstance(source, DatasetSource):
            ds = db_datasets.get_dataset(s, source.dataset_id)
            if ds is None:
                raise InputError.at([*loc, part, "dataset_id"], f"no dataset with id {source.dataset_id!r}")
            if ds.task_type is not None and ds.task_type != t.task_type:
                raise InputError.at(
                    [*loc, part, "dataset_id"],
                    f"dataset {source.dataset_id!r} was uploaded for {ds.task_type}, not {t.task_type}",
                )
            continue
        if len(source.records) > max_rows:
            raise InputError.at(
                [*loc, part, "records"],
                f"too many rows: {len(source.records)}, the limit is {max_rows}",
                "too_long",
            )
        try:
            examples = D.parse_records(source.records, t.task_type)
        except D.DataError as err:
            raise data_error(err, [*loc, part, "records"]) from None
        if t.labels:
            _check_labels(examples, t.labels, [*loc, part, "records"])
    if hp.head == "verbalizer" and t.task_type != "classification":
        raise InputError.at(
            ["body", "hyperparameters", "head"], "the verbalizer head is for classification only"
        )
    if t.task_type == "question-answering" and hp.doc_stride >= hp.max_length:
        raise InputError.at(
            ["body", "hyperparameters", "doc_stride"], "doc_stride must be smaller than max_length"
        )
    if hp.label_words is not None and t.labels is not None and len(hp.label_words) != len(t.labels):
        raise InputError.at(["body", "hyperparameters", "label_words"], "give one label word per label")


def _accepted(s: Session, settings: Any, kind: str, payload: dict, names: list[str]) -> JSONResponse:
    job = db_jobs.create_job(
        s, kind=kind, payload=payload, task_names=names, max_queued=settings.max_queued_jobs
    )
    body = JobAccepted(job_id=job.id, state=job.state).model_dump()
    return JSONResponse(body, status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.post("/train", status_code=202, response_model=JobAccepted)
def train(
    principal: Train,
    s: SessionDep,
    settings: SettingsDep,
    body: Annotated[dict[str, Any], Body(examples=[_EXAMPLE])],
) -> JSONResponse:
    """One task (`task`, `task_type`, `train`, ...) or several sharing one prefix (`tasks`: [...])."""
    if "tasks" in body:
        multi: MultiTrainRequest = _parse(MultiTrainRequest, body)
        names = [t.task for t in multi.tasks]
        if len(set(names)) != len(names):
            raise InputError.at(["body", "tasks"], "each task may appear only once")
        check_tasks(principal, names)
        for i, t in enumerate(multi.tasks):
            _check_task(s, t, multi.hyperparameters, ["body", "tasks", i], settings.max_dataset_rows)
        return _accepted(s, settings, "multitask", multi.model_dump(mode="json"), names)
    single: TrainRequest = _parse(TrainRequest, body)
    check_tasks(principal, [single.task] + ([single.init_from] if single.init_from else []))
    _check_task(s, single, single.hyperparameters, ["body"], settings.max_dataset_rows)
    if single.init_from is not None:
        _check_name(single.init_from, ["body", "init_from"])
        if db_tasks.get_task(s, single.init_from) is None:
            raise InputError.at(["body", "init_from"], f"no task named {single.init_from!r} to start from")
    return _accepted(s, settings, "single", single.model_dump(mode="json"), [single.task])
