"""Training workers: who is alive and what each runs (both executors; rows from app.db.workers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.auth import Train
from app.api.deps import SessionDep, SettingsDep
from app.api.schemas import WorkerOut
from app.db import job_queue
from app.db import jobs as db_jobs
from app.db import workers as db

router = APIRouter(prefix="/workers", tags=["jobs"])


@router.get("", response_model=list[WorkerOut])
def list_workers(
    principal: Train,
    s: SessionDep,
    settings: SettingsDep,
    include_stale: Annotated[
        bool, Query(description="also workers silent for PROMPTHUB_JOB_STALE_S (presumed dead), alive=false")
    ] = False,
) -> list[WorkerOut]:
    """Workers whose heartbeat is younger than `job_stale_s` and, on this host, whose process exists
    (with `include_stale`, the others too, alive=false), oldest first, each with the job it runs when
    the key may see that job's tasks."""
    rows = db.list_workers(s, stale_after_s=settings.job_stale_s, include_stale=include_stale)
    out: list[WorkerOut] = []
    for row in rows:
        # a worker on this host whose process is gone (SIGKILL) is dead before its heartbeat is stale
        alive = not db.is_stale(row, settings.job_stale_s) and not job_queue.worker_process_gone(row.id)
        if not alive and not include_stale:
            continue
        doc = WorkerOut(
            id=row.id,
            host=row.host,
            pid=row.pid,
            executor=row.executor,
            device_class=row.device_class,
            device=row.device,
            queue=row.queue,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
            alive=alive,
        )
        job = db_jobs.get_job(s, row.job_id) if row.job_id else None
        if job is not None and principal.allows_tasks(list(job.task_names or [])):
            doc.job_id, doc.job_tasks = job.id, list(job.task_names or [])
            p = job.progress or {}
            doc.job_progress = {k: p.get(k) for k in ("step", "total", "epoch", "loss", "message")}
        out.append(doc)
    return out
