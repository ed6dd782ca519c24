"""Training jobs: list, inspect, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SessionDep
from app.api.errors import ApiError, InputError
from app.api.schemas import JobOut
from app.db import models, repo

router = APIRouter(prefix="/jobs", tags=["jobs"])

StateQuery = Annotated[str | None, Query(description=f"one of {', '.join(models.JOB_STATES)}")]


@router.get("", response_model=list[JobOut])
def list_jobs(
    s: SessionDep, state: StateQuery = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[JobOut]:
    if state is not None and state not in models.JOB_STATES:
        raise InputError.at(
            ["query", "state"], f"unknown job state {state!r}; use one of {', '.join(models.JOB_STATES)}"
        )
    return [JobOut.model_validate(j) for j in repo.list_jobs(s, state=state, limit=limit)]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, s: SessionDep) -> JobOut:
    job = repo.get_job(s, job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id!r}")
    return JobOut.model_validate(job)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, s: SessionDep) -> JobOut:
    return JobOut.model_validate(repo.request_cancel(s, job_id))
