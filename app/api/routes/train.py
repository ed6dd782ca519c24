"""POST /train: validate everything a worker would trip on, then queue a job (202 + Location)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
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
from app.db import idempotency as db_idempotency
from app.db import job_queue
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.db.errors import Conflict
from app.db.models import utcnow
from app.engine.data import DataError, parse_records
from app.engine.model import SpecError
from app.engine.options import validate_training
from app.engine.search import check_search
from app.jobs.payload import examples_split
from app.names import validate_task_name
from app.security import Principal

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


@dataclass(frozen=True)
class _Idempotency:
    owner: str  # the API key's id, or "keyless"
    key: str
    request_sha256: str


MAX_IDEMPOTENCY_KEY_CHARS = 255
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_IDEMPOTENCY_KEY_CHARS,
        description="a retried POST /train with the same key (and the same API key) answers 200 with "
        "the first request's job instead of queuing another; the same key with another body is a "
        "409 (code idempotency_key_reused). Keys are remembered for PROMPTHUB_IDEMPOTENCY_TTL_S.",
    ),
]


def _idempotency(principal: Principal, key: str | None, body: dict[str, Any]) -> _Idempotency | None:
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InputError.at(
            ["header", "Idempotency-Key"], "use 1-255 printable ASCII characters without spaces"
        )
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _Idempotency(principal.key_id or "keyless", key, hashlib.sha256(canonical.encode()).hexdigest())


def _replay(s: Session, idem: _Idempotency) -> JSONResponse | None:
    """The answer to a request whose key was seen before (None: not seen, or expired)."""
    found = db_idempotency.lookup(s, idem.owner, idem.key)
    if found is None:
        return None
    row, job = found
    if row.request_sha256 != idem.request_sha256:
        return JSONResponse(
            {
                "detail": f"Idempotency-Key {idem.key!r} was used with another request body "
                f"(job {job.id}); use a new key for a new request",
                "code": "idempotency_key_reused",
            },
            status_code=409,
        )
    body = JobAccepted(job_id=job.id, state=job.state).model_dump()
    headers = {"Location": f"/jobs/{job.id}", "Idempotent-Replayed": "true"}
    return JSONResponse(body, status_code=200, headers=headers)


def _accepted(
    s: Session,
    settings: Any,
    kind: str,
    payload: dict,
    names: list[str],
    idem: _Idempotency | None = None,
) -> JSONResponse:
    guard = None
    if idem is not None:
        expires = utcnow() + timedelta(seconds=settings.idempotency_ttl_s)

        def guard(s_: Session, job: Any) -> None:
            db_idempotency.record(
                s_,
                owner=idem.owner,
                key=idem.key,
                request_sha256=idem.request_sha256,
                job_id=job.id,
                expires_at=expires,
            )

    try:
        job = db_jobs.create_job(
            s, kind=kind, payload=payload, task_names=names, max_queued=settings.max_queued_jobs, guard=guard
        )
    except IntegrityError:  # another request with this key won the race: its job is the answer
        if idem is None:
            raise
        replay = _replay(s, idem)
        if replay is None:
            raise
        return replay
    if settings.executor == "celery":  # the row is committed: now "run job X" (app.jobs.celery_app)
        from app.jobs.celery_app import job_device_class, try_send_run_job

        if try_send_run_job(settings, job.id, job_device_class(payload)):
            job_queue.mark_dispatched(s, job.id)
    body = JobAccepted(job_id=job.id, state=job.state).model_dump()
    return JSONResponse(body, status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.post(
    "/train",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": JobAccepted, "description": "a retry with a known Idempotency-Key: the first job"},
        409: {"description": "the Idempotency-Key came with another body (code idempotency_key_reused)"},
    },
)
def train(
    principal: Train,
    s: SessionDep,
    settings: SettingsDep,
    body: Annotated[dict[str, Any], Body(examples=[_EXAMPLE])],
    idempotency_key: IdempotencyHeader = None,
) -> JSONResponse:
    """One task (`task`, `task_type`, `train`, ...) or several sharing one prefix (`tasks`: [...])."""
    check_json(body, ["body"])
    idem = _idempotency(principal, idempotency_key, body)
    if idem is not None and (replay := _replay(s, idem)) is not None:
        return replay
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
        return _accepted(s, settings, "multitask", payload, names, idem)
    single: TrainRequest = _parse(TrainRequest, body)
    check_tasks(principal, [single.task] + ([single.init_from] if single.init_from else []))
    if single.search is not None:
        if single.init_from is not None:
            raise InputError.at(["body", "search"], "a search trains from scratch: drop init_from or search")
        try:
            check_search(
                single.task_type, single.search.trials, single.search.metric, single.search.timeout_s
            )
        except SpecError as err:
            raise InputError.at(["body", *str(err.field).split(".")], str(err)) from None
    payload = _check_task(
        s, single, single.hyperparameters, ["body"], settings.max_dataset_rows, settings.max_labels
    )
    if single.init_from is not None:
        _check_name(single.init_from, ["body", "init_from"])
        if db_tasks.get_task(s, single.init_from) is None:
            raise InputError.at(["body", "init_from"], f"no task named {single.init_from!r} to start from")
    return _accepted(s, settings, "single", payload, [single.task], idem)
