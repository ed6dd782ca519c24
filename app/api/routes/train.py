"""POST /train: validate everything a worker would trip on, then queue a job (202 + Location)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from app.api.auth import Train, check_tasks
from app.api.deps import SessionDep, SettingsDep
from app.api.errors import ApiError, InputError, Loc, check_json, data_error
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
from app.db.errors import Conflict
from app.engine.data import DataError, parse_records
from app.engine.model import SpecError
from app.engine.options import validate_training
from app.jobs.payload import examples_split
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


def _spec_loc(err: SpecError, loc: Loc) -> list[str | int]:
    """Where in the request a SpecError's field is: shared hyperparameters or the task's own."""
    field = err.field or ""
    if field.startswith("hyperparameters."):
        return ["body", "hyperparameters", field.split(".", 1)[1]]
    return [*loc, field] if field else list(loc)


def _check_task(
    s: Session,
    t: TrainTask,
    hp: Hyperparameters,
    loc: list[str | int],
    max_rows: int,
    max_labels: int | None = None,
) -> dict[str, Any]:
    """Validate one task of a training request with the engine's rules (the worker builds its spec
    with the same table); returns its stored form, inline records as parsed examples."""
    _check_name(t.task, [*loc, "task"])
    try:
        db_tasks.check_task_type(db_tasks.get_task(s, t.task), t.task_type)
    except Conflict as e:
        raise ApiError(409, str(e)) from None
    doc = t.model_dump(mode="json")
    parsed: dict[str, list] = {}
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
            parsed[part] = parse_records(source.records, t.task_type)
        except DataError as err:
            raise data_error(err, [*loc, part, "records"]) from None
        doc[part] = examples_split(parsed[part])
    try:
        validate_training(t.task_type, hp.model_dump(), t.labels, parsed, max_labels=max_labels)
    except SpecError as err:
        raise InputError.at(_spec_loc(err, loc), str(err)) from None
    except DataError as err:
        raise data_error(err, [*loc, err.split or "train", "records"]) from None
    return doc


def _accepted(s: Session, settings: Any, kind: str, payload: dict, names: list[str]) -> JSONResponse:
    job = db_jobs.create_job(
        s, kind=kind, payload=payload, task_names=names, max_queued=settings.max_queued_jobs
    )
    if settings.executor == "celery":  # the row is committed: now "run job X" (app.jobs.celery_app)
        from app.jobs.celery_app import job_device_class, try_send_run_job

        if try_send_run_job(settings, job.id, job_device_class(payload)):
            db_jobs.mark_dispatched(s, job.id)
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
    check_json(body, ["body"])
    if "tasks" in body:
        multi: MultiTrainRequest = _parse(MultiTrainRequest, body)
        names = [t.task for t in multi.tasks]
        if len(set(names)) != len(names):
            raise InputError.at(["body", "tasks"], "each task may appear only once")
        check_tasks(principal, names)
        payload = multi.model_dump(mode="json")
        payload["tasks"] = [
            _check_task(
                s,
                t,
                multi.hyperparameters,
                ["body", "tasks", i],
                settings.max_dataset_rows,
                settings.max_labels,
            )
            for i, t in enumerate(multi.tasks)
        ]
        return _accepted(s, settings, "multitask", payload, names)
    single: TrainRequest = _parse(TrainRequest, body)
    check_tasks(principal, [single.task] + ([single.init_from] if single.init_from else []))
    payload = _check_task(
        s, single, single.hyperparameters, ["body"], settings.max_dataset_rows, settings.max_labels
    )
    if single.init_from is not None:
        _check_name(single.init_from, ["body", "init_from"])
        if db_tasks.get_task(s, single.init_from) is None:
            raise InputError.at(["body", "init_from"], f"no task named {single.init_from!r} to start from")
    return _accepted(s, settings, "single", payload, [single.task])
