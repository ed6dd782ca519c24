"""Errors are part of the API: each maps to a status and a message naming the field, line or limit.

Validation-style problems answer 422 in FastAPI's shape: {"detail": [{"loc": [...], "msg", "type"}]}.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.db.errors import Conflict, NotFound, TooManyJobs
from app.engine.checkpoint import BackboneMismatchError, CheckpointError
from app.engine.data import DataError
from app.serving.batcher import BatcherClosed, QueueFull, TooManyRows
from app.serving.hub import NotReady, PredictTimeout, TaskNotFound
from app.store import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

Loc = Sequence[str | int]


class ApiError(Exception):
    """An error with a status and a plain message: {"detail": message}."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.message = message
        self.headers = headers
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


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return AsciiJSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=exc.headers)


async def _input_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    return AsciiJSONResponse({"detail": exc.errors}, status_code=422)


async def _data_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DataError)
    return JSONResponse({"detail": data_error(exc, ["body"]).errors}, status_code=422)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return AsciiJSONResponse({"detail": str(exc)}, status_code=404)


async def _queue_full(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return JSONResponse({"detail": str(exc)}, status_code=429, headers=_retry_after(exc.retry_after_s))


async def _too_many_rows(_: Request, exc: Exception) -> JSONResponse:
    err = {"loc": ["body", "inputs"], "msg": str(exc), "type": "too_long"}
    return JSONResponse({"detail": [err]}, status_code=422)


async def _not_ready(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"not ready: {exc}"}, status_code=503, headers=_retry_after(5))


async def _timeout(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=504, headers=_retry_after(5))


async def _mismatch(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _checkpoint(_: Request, exc: Exception) -> JSONResponse:
    log.error("checkpoint error: %s", exc)
    return JSONResponse({"detail": f"the stored task could not be loaded: {exc}"}, status_code=500)


async def _store_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.error("store unavailable: %s", exc)
    return JSONResponse(
        {"detail": f"the store cannot be reached; retry later: {exc}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
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
    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    async def too_many(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429, headers=_retry_after(30))

    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, conflict)
    app.add_exception_handler(TooManyJobs, too_many)
