"""The OpenAPI document, typed where the routes validate by hand (so clients and fuzzers see the
real shapes): POST /train's body is `TrainRequest | MultiTrainRequest` (the route still parses the
dict itself, keeping its error locations), task names carry their pattern (app.api.deps), job ids
theirs, and every operation lists the error statuses it can answer with their bodies
(ErrorResponse: {"detail", "code"}; 422: ValidationErrorResponse), from the rules of the edge
(app.api.edge: 401/403/429 before any work, 408/413 on bodies) and the few statuses routes add."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from app.api.edge import is_open
from app.api.errors import error_responses
from app.api.routes.v2 import InferRequest
from app.api.schemas import ErrorResponse, MultiTrainRequest, TrainRequest, ValidationErrorResponse

JOB_ID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

#: statuses a route answers beyond the common ones (method, path template) -> statuses
EXTRA_STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/train"): (409,),
    ("post", "/predict/{task}"): (500, 503, 504),
    ("post", "/v2/models/{task}/infer"): (500, 503, 504),
    ("post", "/v2/models/{task}/versions/{version}/infer"): (500, 503, 504),
    ("get", "/v2/models/{task}"): (503,),
    ("get", "/v2/models/{task}/versions/{version}"): (503,),
    ("post", "/tasks/{task}/versions/{version}/activate"): (409,),
    ("post", "/jobs/{job_id}/cancel"): (409,),
    ("delete", "/datasets/{dataset_id}"): (409,),
    ("post", "/datasets"): (415,),
    ("get", "/readyz"): (503,),
    ("get", "/v2/health/ready"): (503,),
}


def _train_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    keyed, top = models_json_schema(
        [
            (TrainRequest, "validation"),
            (MultiTrainRequest, "validation"),
            (ErrorResponse, "validation"),
            (ValidationErrorResponse, "validation"),
            (InferRequest, "validation"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    body = {"oneOf": [keyed[(TrainRequest, "validation")], keyed[(MultiTrainRequest, "validation")]]}
    defs = dict(top.get("$defs", {}))
    return body, defs


def _statuses(method: str, path: str, op: dict[str, Any]) -> list[int]:
    statuses: set[int] = set(EXTRA_STATUSES.get((method, path), ()))
    if not is_open(path):
        statuses |= {401, 403, 429}
    if method in ("post", "put", "patch"):
        statuses |= {408, 413}
    if op.get("parameters") or op.get("requestBody"):
        statuses.add(422)
    if "{" in path and not is_open(path):
        statuses.add(404)
    return sorted(statuses)


def _error_responses(doc: dict[str, Any]) -> None:
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for status, spec in error_responses(*_statuses(method, path, op)).items():
                model = spec["model"].__name__
                op["responses"][str(status)] = {
                    "description": spec["description"],
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
                }
            for param in op.get("parameters", []):
                if param.get("in") == "path" and param.get("name") == "job_id":
                    param.setdefault("schema", {})["pattern"] = JOB_ID_RE


def install_openapi(app: FastAPI) -> None:
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = plain()
        body, defs = _train_schemas()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in defs.items():
            components.setdefault(name, schema)
        op = doc.get("paths", {}).get("/train", {}).get("post")
        if op is not None:
            content = op.setdefault("requestBody", {"required": True}).setdefault("content", {})
            media = content.setdefault("application/json", {})
            media["schema"] = body
        _error_responses(doc)
        for unused in ("HTTPValidationError", "ValidationError"):
            if not _referenced(doc, unused):
                components.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _referenced(doc: dict[str, Any], name: str) -> bool:
    import json

    return f'"#/components/schemas/{name}"' in json.dumps(doc)
