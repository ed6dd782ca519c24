"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.auth import Metrics
from app.api.deps import HubDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(hub: HubDep) -> JSONResponse:
    if hub.ready:
        bb = hub.backbone
        return JSONResponse(
            {"status": "ready", "backbone": bb.name, "devices": [str(b.device) for b in hub.backbones or []]}
        )
    if hub.load_error:
        return JSONResponse({"status": "failed", "error": hub.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, _: Metrics) -> Response:
    return request.app.state.metrics.render()
