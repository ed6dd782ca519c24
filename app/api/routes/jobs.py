"""Training jobs: list, inspect, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from app.api.auth import Train
from app.api.deps import SessionDep
from app.api.errors import ApiError, InputError
from app.api.schemas import JobOut
from app.db import jobs as db
from app.db import models
from app.security import Principal

router = APIRouter(prefix="/jobs", tags=["jobs"])

StateQuery = Annotated[str | None, Query(description=f"one of {', '.join(models.JOB_STATES)}")]


@router.get("", response_model=list[JobOut])
def list_jobs(
    principal: Train,
    s: SessionDep,
    state: StateQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobOut]:
    if state is not None and state not in models.JOB_STATES:
        raise InputError.at(
            ["query", "state"], f"unknown job state {state!r}; use one of {', '.join(models.JOB_STATES)}"
        )
    jobs = db.list_jobs(s, state=state, limit=limit)
    return [JobOut.model_validate(j) for j in jobs if principal.allows_tasks(list(j.task_names or []))]


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
