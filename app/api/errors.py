"""Errors are part of the API: each maps to a status and a message naming the field, line or limit.

Validation-style problems answer 422 in FastAPI's shape: {"detail": [{"loc": [...], "msg", "type"}]}.
Every error body also carries a stable machine `code` (ERROR_CODES, documented in docs/contracts.md):
{"detail": ..., "code": "task_not_found"}; under /v2 (the Open Inference Protocol) it carries the
protocol's `error` message as well.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db.errors import Conflict, NotFound, TooManyJobs
from app.engine.checkpoint import BackboneMismatchError, CheckpointError
from app.engine.data import DataError
from app.serving.admission import Overloaded
from app.serving.batcher import BatcherClosed, QueueFull, TooManyRows
from app.serving.hub import NotReady, PredictTimeout, TaskNotFound
from app.store import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

Loc = Sequence[str | int]


#: the `code` of an error body by status, when no more specific code applies
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    500: "internal_error",
    503: "not_ready",
    504: "timeout",
}

#: every `code` an error body may carry, with its status and meaning (docs/contracts.md lists them)
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the request is malformed in a way no field names"),
    "unauthorized": (401, "no API key, a malformed Authorization header, or an unknown/revoked/expired key"),
    "forbidden": (
        403,
        "the key lacks the scope or the task; or a keyless request with a foreign Host/Origin",
    ),
    "not_found": (404, "no such route or file"),
    "task_not_found": (404, "no such task, or it has no active version"),
    "version_not_found": (404, "no such version of the task"),
    "job_not_found": (404, "no such job (or not one of the key's tasks)"),
    "dataset_not_found": (404, "no such dataset"),
    "method_not_allowed": (405, "the route does not take this method"),
    "request_timeout": (408, "the request body did not arrive in time"),
    "conflict": (409, "the change contradicts what is stored (e.g. another task type)"),
    "backbone_mismatch": (409, "the checkpoint was trained on another backbone"),
    "idempotency_key_reused": (409, "the Idempotency-Key of POST /train came before with another body"),
    "payload_too_large": (413, "the request body or upload is over its limit"),
    "unsupported_media_type": (415, "the body is not in a media type the route reads"),
    "invalid_input": (422, "a field is invalid: `detail` lists each problem with its location"),
    "rate_limited": (429, "the API key is over its request rate or quota"),
    "queue_full": (429, "the prediction queue is full"),
    "overloaded": (429, "too much prediction work in flight for this key or the server"),
    "too_many_jobs": (429, "the training job queue is full"),
    "internal_error": (500, "an unexpected server error (logged with the request id)"),
    "store_error": (500, "a stored task could not be read or loaded"),
    "not_ready": (503, "the backbone is still loading (or failed to load), or the server is stopping"),
    "store_unavailable": (503, "the object store cannot be reached; retry later"),
    "timeout": (504, "the prediction was not answered in time"),
}


def code_for(status: int) -> str:
    return STATUS_CODES.get(status, "internal_error" if status >= 500 else "bad_request")


def error_content(detail: Any, code: str, path: str = "") -> dict[str, Any]:
    """An error body: {"detail", "code"} (+ "error", the message, on the /v2 protocol's routes)."""
    body: dict[str, Any] = {"detail": detail, "code": code}
    if path == "/v2" or path.startswith("/v2/"):
        body["error"] = detail if isinstance(detail, str) else "; ".join(_messages(detail))
    return body


def _messages(detail: Any) -> list[str]:
    out = []
    for e in detail if isinstance(detail, list) else [detail]:
        if isinstance(e, dict):
            loc = ".".join(str(x) for x in e.get("loc", []))
            out.append(f"{loc}: {e.get('msg', '')}" if loc else str(e.get("msg", "")))
        else:
            out.append(str(e))
    return out


class ApiError(Exception):
    """An error with a status, a plain message and a code: {"detail": message, "code": code}."""

    def __init__(
        self, status_code: int, message: str, headers: dict[str, str] | None = None, code: str | None = None
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.headers = headers
        self.code = code or code_for(status_code)
        super().__init__(message)


class InputError(Exception):
    """One or more 422 problems, each at a location in the request."""

    def __init__(self, errors: list[dict]) -> None:
        self.errors = errors
        super().__init__("; ".join(e["msg"] for e in errors))

    @classmethod
    def at(cls, loc: Loc, msg: str, type_: str = "value_error") -> InputError:
        return cls([{"loc": list(loc), "msg": msg, "type": type_}])


MAX_JSON_DEPTH = 32  # nesting of objects and lists in a request body
MAX_VERSION = 2**31 - 1  # versions are 32-bit integers in the database


def check_json(value: object, loc: Loc, max_depth: int = MAX_JSON_DEPTH) -> None:
    """InputError (422) at the first place in a parsed JSON value that no layer below can take: a
    string (or key) with a lone UTF-16 surrogate such as "\\ud800" (not UTF-8 encodable), or nesting
    deeper than `max_depth`. Iterative, so any depth that the JSON parser accepted is checked."""
    stack: list[tuple[object, list[str | int], int]] = [(value, list(loc), 0)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, str):
            if not _utf8(v):
                raise InputError.at(
                    where,
                    "text holds a lone UTF-16 surrogate (e.g. \\ud800): send valid Unicode",
                    "string_unicode",
                )
            continue
        if isinstance(v, dict | list):
            if depth >= max_depth:
                raise InputError.at(where, f"nested deeper than {max_depth} levels", "too_deep")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, child in items:
                if isinstance(k, str) and not _utf8(k):
                    raise InputError.at(
                        where,
                        "a key holds a lone UTF-16 surrogate (e.g. \\ud800): send valid Unicode",
                        "string_unicode",
                    )
                stack.append((child, [*where, k], depth + 1))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def data_error(err: DataError, prefix: Loc, label: str | None = None) -> InputError:
    """A DataError located at prefix[line - 1][field]; `label` names the list in the message."""
    loc: list[str | int] = list(prefix)
    msg = err.message
    if err.line is not None:
        loc.append(err.line - 1)
        where = f"{label}[{err.line - 1}]" if label else f"line {err.line}"
        if err.field:
            loc.append(err.field)
            where += f".{err.field}" if label else f", field '{err.field}'"
        msg = f"{where}: {msg}"
    elif err.field:
        loc.append(err.field)
        msg = f"{err.field}: {msg}"
    return InputError.at(loc, msg, "data_error")


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error echoing a client's string holding a lone surrogate
    ("\\ud800") is still encodable (UTF-8 output would raise and answer 500)."""

    def render(self, content: Any) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _json(
    request: Request,
    detail: Any,
    status: int,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    content = error_content(detail, code or code_for(status), request.url.path)
    return AsciiJSONResponse(content, status_code=status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _json(request, jsonable_encoder(exc.errors()), 422)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json(request, exc.message, exc.status_code, exc.code, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown route, a wrong method) with a code."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code < 400:
        return Response(status_code=exc.status_code, headers=exc.headers)
    return _json(request, exc.detail, exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(request, "internal server error", 500)


async def _input_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    return _json(request, exc.errors, 422)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DataError)
    return _json(request, data_error(exc, ["body"]).errors, 422)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    version = getattr(exc, "version", None)
    name = getattr(exc, "name", None)
    code = "not_found" if name is None else "task_not_found" if version is None else "version_not_found"
    return _json(request, str(exc), 404, code)


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    code = "overloaded" if isinstance(exc, Overloaded) else "queue_full"
    return _json(request, str(exc), 429, code, _retry_after(exc.retry_after_s))


async def _too_many_rows(request: Request, exc: Exception) -> JSONResponse:
    err = {"loc": ["body", "inputs"], "msg": str(exc), "type": "too_long"}
    return _json(request, [err], 422)


async def _not_ready(request: Request, exc: Exception) -> JSONResponse:
    return _json(request, f"not ready: {exc}", 503, "not_ready", _retry_after(5))


async def _timeout(request: Request, exc: Exception) -> JSONResponse:
    return _json(request, str(exc), 504, "timeout", _retry_after(5))


async def _mismatch(request: Request, exc: Exception) -> JSONResponse:
    return _json(request, str(exc), 409, "backbone_mismatch")


async def _checkpoint(request: Request, exc: Exception) -> JSONResponse:
    log.error("checkpoint error: %s", exc)
    return _json(request, f"the stored task could not be loaded: {exc}", 500, "store_error")


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("store unavailable: %s", exc)
    detail = f"the store cannot be reached; retry later: {exc}"
    return _json(request, detail, 503, "store_unavailable", headers={"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(TaskNotFound, _not_found)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(TooManyRows, _too_many_rows)
    app.add_exception_handler(NotReady, _not_ready)
    app.add_exception_handler(BatcherClosed, _not_ready)
    app.add_exception_handler(PredictTimeout, _timeout)
    app.add_exception_handler(BackboneMismatchError, _mismatch)
    app.add_exception_handler(CheckpointError, _checkpoint)
    app.add_exception_handler(StoreError, _checkpoint)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)  # S3 down: the more specific class wins
    _install_db_handlers(app)


def _install_db_handlers(app: FastAPI) -> None:
    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return _json(request, str(exc), 409, "conflict")

    async def too_many(request: Request, exc: Exception) -> JSONResponse:
        return _json(request, str(exc), 429, "too_many_jobs", _retry_after(30))

    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, conflict)
    app.add_exception_handler(TooManyJobs, too_many)


_DESCRIPTIONS = {
    400: "malformed request",
    401: "no valid API key (`unauthorized`)",
    403: "the key lacks the scope or the task (`forbidden`)",
    404: "not found (`task_not_found`, `version_not_found`, `job_not_found`, `dataset_not_found`)",
    408: "the body did not arrive in time (`request_timeout`)",
    409: "conflicts with what is stored (`conflict`, `backbone_mismatch`)",
    413: "body over its limit (`payload_too_large`)",
    415: "unsupported media type",
    422: "invalid input (`invalid_input`): each problem with its location",
    429: "over a limit (`rate_limited`, `queue_full`, `overloaded`, `too_many_jobs`); see Retry-After",
    500: "server error (`internal_error`, `store_error`)",
    503: "not ready (`not_ready`); see Retry-After",
    504: "not answered in time (`timeout`)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the error statuses it can answer, with their body models."""
    from app.api.schemas import ErrorResponse, ValidationErrorResponse

    return {
        s: {"model": ValidationErrorResponse if s == 422 else ErrorResponse, "description": _DESCRIPTIONS[s]}
        for s in statuses
    }
