"""Liveness, readiness and Prometheus metrics.

/readyz reports the embedded training worker ({"worker": {"state", "restarts",
"pid", "last_exit", "error"}}, or null when the server runs none). Readiness is about predictions:
a replica whose worker is down still serves predictions, so /readyz stays 200 with the worker's
state in the body ("training": "down") rather than taking the replica out of the load balancer;
monitoring alerts on `worker.state` != "running" (and on `restarts` growing)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.auth import Metrics
from app.api.deps import HubDep

router = APIRouter(tags=["health"])


def _worker(request: Request) -> dict[str, Any] | None:
    supervisor = getattr(request.app.state, "worker", None)
    return supervisor.health() if supervisor is not None else None


def _training(worker: dict[str, Any] | None) -> str:
    if worker is None:
        return "external"  # no embedded worker: `prompthub worker` processes train, if any
    return "up" if worker["state"] == "running" else "down"


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}  # liveness of this process only


@router.get("/readyz")
def readyz(request: Request, hub: HubDep) -> JSONResponse:
    worker = _worker(request)
    extra = {"training": _training(worker), "worker": worker}
    if hub.ready:
        bb = hub.backbone
        return JSONResponse(
            {
                "status": "ready",
                "backbone": bb.name,
                "devices": [str(b.device) for b in hub.backbones or []],
                "runtime": hub.runtime_info(),
                **extra,
            }
        )
    if hub.load_error:
        return JSONResponse(
            {"status": "failed", "error": hub.load_error, "code": "not_ready", **extra}, status_code=503
        )
    return JSONResponse(
        {"status": "loading", "code": "not_ready", **extra}, status_code=503, headers={"Retry-After": "5"}
    )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, _: Metrics) -> Response:
    return request.app.state.metrics.render()
