"""The API edge: an ASGI layer that decides who is calling before any body is read.

Per request, from the ASGI scope and headers only:

1. keyless or not: a connection is keyless only when auth is not `required` AND both its peer
   (`scope["client"]`) and the socket it arrived on (`scope["server"]`) are loopback, so
   `uvicorn --host 0.0.0.0` needs keys even for a client on 127.0.0.1 (the socket is not loopback);
2. keyless requests must name a loopback Host and send no Origin or a loopback one (DNS rebinding,
   cross-site form posts): 403 otherwise;
3. a request with `Authorization` is authenticated here (401 for a bad, revoked or expired key) and
   held to its key's rate limit and quota (429 with Retry-After); one without it, when keys are
   required, is answered 401 at once unless the route is open (health, docs), whose bodies are capped
   at `unauth_body_bytes`;
4. the body must arrive within `body_timeout_s` (and no chunk later than `body_idle_timeout_s` after
   the previous one), else 408.

The principal is left in `scope["state"]` for the route dependencies (app.api.auth). Activations and
task deletions that succeed are written to the audit log here (their routes stay plain).

Every response, refusals and errors included, carries an `X-Request-ID` (the client's own when it
sent a sane one: 1-128 characters of letters, digits and `._:-`; else a fresh one), and every
request is logged once on the `prompthub.access` logger: method, path, task, status, rows (set by
the prediction routes with `note_rows`), latency, request id and key id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import ApiError, code_for, error_content
from app.api.sockets import listening_addresses
from app.config import Settings, is_loopback
from app.security import Principal, audit

OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/ui",
        "/ui/",
    }
)
#: static files that hold no data: the console's page assets and the API docs' assets
OPEN_PREFIXES = ("/ui/static/", "/docs/assets/")


def is_open(path: str) -> bool:
    """Whether a path answers without a key (health, the API docs, the console's page and assets;
    the console's data comes from the API, with the caller's key)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


AUDITED = {
    ("POST", "/tasks/{task}/versions/{version}/activate"): "version.activate",
    ("DELETE", "/tasks/{task}"): "task.delete",
}


access_log = logging.getLogger("prompthub.access")

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID when sane, else a new random one."""
    given = _header(scope, REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def note_rows(scope: Scope, rows: int) -> None:
    """Record how many inputs a request carried, for its access-log line."""
    scope.setdefault("state", {})["rows"] = rows


def _task_of(scope: Scope) -> str | None:
    task = scope.get("path_params", {}).get("task")
    return task if isinstance(task, str) else None


class _BodyTimeout(Exception):
    pass


class _TooLarge(Exception):
    pass


def connection_is_local(scope: Scope) -> bool:
    """Both ends of the connection are loopback: the peer, the connection's local address and the
    socket the server listens on (looked up in /proc: a server bound to 0.0.0.0 and reached through
    127.0.0.1 has a loopback local address but is not a loopback server)."""
    client = scope.get("client")
    server = scope.get("server")
    if not (client and server and is_loopback(str(client[0])) and is_loopback(str(server[0]))):
        return False
    port = server[1] if len(server) > 1 else None
    listening = listening_addresses(port if isinstance(port, int) else None)
    return listening is None or all(is_loopback(a) for a in listening)


def keyless_allowed(settings: Settings, scope: Scope) -> bool:
    """No key needed: auth is not `required`, the configured host is loopback, and so is the connection."""
    return not settings.keys_required and connection_is_local(scope)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return None


def _host_is_loopback(host_header: str) -> bool:
    try:
        host = urlsplit("//" + host_header.strip()).hostname
    except ValueError:
        return False
    return host is not None and is_loopback(host)


def _origin_is_loopback(origin: str) -> bool:
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.hostname is not None and is_loopback(parts.hostname)


class RateLimits:
    """Per-key request limits with the `limits` library (in memory, per process): a sliding-window
    rate (`key_rate_limit`) and a quota (`key_quota`), both in `limits` notation."""

    def __init__(self, rate: str, quota: str) -> None:
        from limits import parse_many, storage, strategies

        self.items = [
            *(parse_many(rate) if rate.strip() else []),
            *(parse_many(quota) if quota.strip() else []),
        ]
        self.limiter = strategies.SlidingWindowCounterRateLimiter(storage.MemoryStorage())

    def hit(self, key_id: str) -> float | None:
        """None when the key may go on, else the seconds until it may try again."""
        for item in self.items:
            if not self.limiter.hit(item, "key", key_id):
                stats = self.limiter.get_window_stats(item, "key", key_id)
                return max(1.0, stats.reset_time - time.time())
        return None


class EdgeGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        authenticate: Callable[[str], object],
        rate_limits: RateLimits | None,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.authenticate = authenticate  # async (token) -> Principal, raises ApiError
        self.rate_limits = rate_limits
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid.encode("latin-1"))]}
            await send(message)

        try:
            await self._guard(scope, receive, send_with_id)
        except Exception:
            if not status:  # answered here (with the request id), then left to the server to log
                await self._refuse(send_with_id, 500, "internal server error", path=scope.get("path", ""))
            raise
        finally:
            self._access(scope, status[0] if status else 0, start, rid)

    def _access(self, scope: Scope, status: int, start: float, rid: str) -> None:
        state = scope.get("state", {})
        principal = state.get("principal")
        fields = {
            "method": scope.get("method", ""),
            "path": scope.get("path", ""),
            "task": _task_of(scope),
            "status": status,
            "rows": state.get("rows"),
            "latency_ms": round((time.monotonic() - start) * 1000, 2),
            "request_id": rid,
            "key_id": getattr(principal, "key_id", None),
        }
        access_log.info(
            "%s %s %s task=%s rows=%s %.1fms request_id=%s",
            fields["method"],
            fields["path"],
            status,
            fields["task"] or "-",
            "-" if fields["rows"] is None else fields["rows"],
            fields["latency_ms"],
            rid,
            extra={"access": fields},
        )

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        keyless = keyless_allowed(self.settings, scope)
        try:
            principal = await self._principal(scope, keyless)
        except ApiError as e:
            await self._refuse(send, e.status_code, e.message, e.headers, e.code, scope.get("path", ""))
            return
        state = scope.setdefault("state", {})
        state["keyless"] = keyless
        state["principal"] = principal
        if principal is not None and principal.key_id is not None and self.rate_limits is not None:
            wait = self.rate_limits.hit(principal.key_id)
            if wait is not None:
                await self._refuse(
                    send,
                    429,
                    "this API key is over its request rate or quota: try again later",
                    {"Retry-After": str(int(wait + 0.999))},
                    "rate_limited",
                    scope.get("path", ""),
                )
                return
        cap = None if principal is not None else self.settings.unauth_body_bytes
        await self._forward(scope, receive, send, principal, cap)

    async def _principal(self, scope: Scope, keyless: bool) -> Principal | None:
        """The caller (None: not authenticated, only for open routes); raises ApiError to refuse."""
        from app.api.auth import parse_authorization, unauthorized

        path = scope.get("path", "")
        if keyless:
            host = _header(scope, b"host")
            if host is not None and not _host_is_loopback(host):
                raise ApiError(
                    403,
                    f"Host {host!r} is not a loopback name: this server answers keyless "
                    "requests for localhost, 127.0.0.1 and ::1 only",
                )
            origin = _header(scope, b"origin")
            if origin is not None and not _origin_is_loopback(origin):
                raise ApiError(403, "cross-origin requests are refused (Origin is not a loopback address)")
        header = _header(scope, b"authorization")
        if header is not None:
            return await self.authenticate(parse_authorization(header))  # type: ignore[misc]
        if keyless:
            return Principal.local()
        if is_open(path):
            return None
        raise unauthorized(
            "an API key is required: send 'Authorization: Bearer <key>' (create one with `prompthub keys create`)"
        )

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal | None, cap: int | None
    ) -> None:
        settings = self.settings
        start = time.monotonic()
        deadline = start + settings.body_timeout_s
        received = 0
        body_done = False
        failed: Exception | None = None
        status: list[int] = []

        if cap is not None:
            length = _header(scope, b"content-length")
            if length is not None and length.strip().isdigit() and int(length) > cap:
                await self._refuse(
                    send,
                    413,
                    f"request body too large before authentication: the limit is {cap} bytes",
                    path=scope.get("path", ""),
                )
                return

        async def guarded_receive() -> Message:
            nonlocal received, failed, body_done
            if body_done:
                return await receive()  # after the body: waiting for a disconnect is not timed
            left = min(deadline - time.monotonic(), settings.body_idle_timeout_s)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, left))
            except TimeoutError:
                failed = _BodyTimeout()
                raise failed from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if cap is not None and received > cap:
                    failed = _TooLarge()
                    raise failed
            return message

        async def guarded_send(message: Message) -> None:
            if failed is not None:
                return  # the app's answer to a cut-off body is replaced below
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if failed is None:
                raise
        if failed is not None and not status:
            path = scope.get("path", "")
            if isinstance(failed, _BodyTimeout):
                await self._refuse(
                    send, 408, "request body not received in time", {"Connection": "close"}, path=path
                )
            else:
                await self._refuse(
                    send,
                    413,
                    f"request body too large before authentication: the limit is {cap} bytes",
                    path=path,
                )
            return
        if status and 200 <= status[0] < 300:
            self._audit(scope, principal)

    def _audit(self, scope: Scope, principal: Principal | None) -> None:
        route = scope.get("route")
        event = AUDITED.get((scope.get("method", ""), getattr(route, "path", "")))
        if event is None:
            return
        params = scope.get("path_params", {})
        actor = principal.actor if principal is not None else "unknown"
        audit(event, actor, **{k: params[k] for k in ("task", "version") if k in params})

    async def _refuse(
        self,
        send: Send,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        code: str | None = None,
        path: str = "",
    ) -> None:
        if self.on_refused is not None:
            self.on_refused(status)
        body = json.dumps(error_content(message, code or code_for(status), path)).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
