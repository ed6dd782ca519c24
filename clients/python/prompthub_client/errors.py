"""Errors of the client: one exception per kind of answer, each carrying status, code and detail."""

from __future__ import annotations

from typing import Any


class PromptHubError(Exception):
    """Anything this client raises on purpose."""


class ApiError(PromptHubError):
    """The server answered with an error status.

    `status`: the HTTP status; `code`: the server's stable machine code when it sends one (e.g.
    "task_not_found", "idempotency_key_reused"), else a code derived from the status; `detail`: the
    server's detail (a message, or a list of {"loc", "msg", "type"} for 422s)."""

    default_code = "error"

    def __init__(
        self, status: int, detail: Any, code: str | None = None, headers: dict | None = None
    ) -> None:
        self.status = status
        self.detail = detail
        self.code = code or self.default_code
        self.headers = dict(headers or {})
        super().__init__(f"{status} {self.code}: {describe(detail)}")


class BadRequest(ApiError):
    default_code = "bad_request"


class Unauthorized(ApiError):
    default_code = "unauthorized"


class Forbidden(ApiError):
    default_code = "forbidden"


class NotFound(ApiError):
    default_code = "not_found"


class Conflict(ApiError):
    default_code = "conflict"


class PayloadTooLarge(ApiError):
    default_code = "payload_too_large"


class InvalidInput(ApiError):
    default_code = "invalid_input"

    @property
    def errors(self) -> list[dict]:
        return self.detail if isinstance(self.detail, list) else []


class RateLimited(ApiError):
    default_code = "rate_limited"

    @property
    def retry_after(self) -> float | None:
        try:
            return float(self.headers.get("retry-after", ""))
        except ValueError:
            return None


class ServerError(ApiError):
    default_code = "server_error"


class JobFailed(PromptHubError):
    """A training job ended failed or cancelled; `job` is its last JobInfo."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.status = None
        self.code = f"job_{job.state}"
        self.detail = job.error or job.state
        super().__init__(f"job {job.id} {job.state}: {job.error or 'no error message'}")


_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: RateLimited,
}


def error_for(status: int, body: Any, headers: Any = None) -> ApiError:
    detail: Any = body
    code = None
    if isinstance(body, dict):
        detail = body.get("detail", body)
        code = body.get("code") if isinstance(body.get("code"), str) else None
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status, detail, code, {k.lower(): v for k, v in dict(headers or {}).items()})


def describe(detail: Any) -> str:
    """A 422's list of problems as "loc: msg; ...", anything else as text."""
    if isinstance(detail, list):
        parts = []
        for e in detail:
            if isinstance(e, dict):
                loc = ".".join(str(p) for p in e.get("loc", []) if p != "body")
                parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
            else:
                parts.append(str(e))
        return "; ".join(parts)
    return str(detail)
