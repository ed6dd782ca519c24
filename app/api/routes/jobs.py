"""Training jobs: list, inspect, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from app.api.auth import Train
from app.api.deps import SessionDep
from app.api.errors import ApiError, InputError
from app.api.pagination import (
    DEFAULT_LIMIT,
    PAGE_RESPONSES,
    CursorQuery,
    LimitQuery,
    decode_cursor,
    fill_page,
    set_next,
)
from app.api.schemas import JobOut
from app.db import jobs as db
from app.db import models
from app.security import Principal

router = APIRouter(prefix="/jobs", tags=["jobs"])

StateQuery = Annotated[str | None, Query(description=f"one of {', '.join(models.JOB_STATES)}")]


@router.get("", response_model=list[JobOut], responses=PAGE_RESPONSES)
def list_jobs(
    principal: Train,
    s: SessionDep,
    request: Request,
    response: Response,
    state: StateQuery = None,
    task: Annotated[str | None, Query(max_length=64, description="only jobs that train this task")] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> list[JobOut]:
    """Jobs newest first, a page at a time: the next page's cursor is in `X-Next-Cursor` (and
    `Link`), absent on the last page."""
    if state is not None and state not in models.JOB_STATES:
        raise InputError.at(
            ["query", "state"], f"unknown job state {state!r}; use one of {', '.join(models.JOB_STATES)}"
        )
    after = decode_cursor(cursor, [datetime, str])

    def keep(j: models.Job) -> bool:
        names = list(j.task_names or [])
        return principal.allows_tasks(names) and (task is None or task in names)

    rows, next_key = fill_page(
        lambda a, n: db.page_jobs(s, after=a, limit=n, state=state),  # type: ignore[arg-type]
        lambda j: (j.created_at, j.id),
        keep,
        after,
        limit,
    )
    set_next(response, request, next_key)
    return [JobOut.model_validate(j) for j in rows]


def _job_for(s: Session, job_id: str, principal: Principal) -> models.Job:
    job = db.get_job(s, job_id)
    if job is None or not principal.allows_tasks(list(job.task_names or [])):
        raise ApiError(
            404, f"no job with id {job_id!r}", code="job_not_found"
        )  # a key limited to some tasks sees only their jobs
    return job


@router.get("/{job_id}", response_model=JobOut)
def get_job(principal: Train, job_id: str, s: SessionDep) -> JobOut:
    return JobOut.model_validate(_job_for(s, job_id, principal))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(principal: Train, job_id: str, s: SessionDep) -> JobOut:
    _job_for(s, job_id, principal)
    return JobOut.model_validate(db.request_cancel(s, job_id))
