"""Access control for the routes: a bearer API key, its scopes and its task allow-list.

Who is calling is decided per connection by the edge layer (app.api.edge) before any body is read:
keyless only when PROMPTHUB_AUTH is not `required` and both the peer and the listening socket are
loopback. A keyless request is the local operator with every scope; a request that does send a key
is still held to that key. The edge leaves the principal in the request state; the dependencies here
read it (and fall back to the same decision when the app runs without the edge).

401 (with `WWW-Authenticate: Bearer`): no key, a malformed header, an unknown or revoked key.
403: the key lacks the scope, or is not allowed the task.

Verified keys are held in a small per-app cache for `auth_cache_s` seconds (a key revoked through
the API is dropped from it at once; one revoked with the CLI in another process is refused within
that many seconds). A key past its `expires_at` is refused. Authentication only reads the database:
`last_used_at` is collected in memory and written in a background thread at most every
`key_touch_interval_s`, best effort (a locked or read-only database delays it, never a request).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.errors import ApiError
from app.db.models import utcnow
from app.security import Principal

log = logging.getLogger(__name__)

REALM = 'Bearer realm="prompthub"'
CACHE_ENTRIES = 4096

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer ph_...`, a key made with `prompthub keys create` or POST /keys",
)


def unauthorized(message: str, error: str | None = None) -> ApiError:
    value = REALM if error is None else f'{REALM}, error="{error}"'
    return ApiError(401, message, headers={"WWW-Authenticate": value})


def forbidden(message: str, scope: str | None = None) -> ApiError:
    value = f'{REALM}, error="insufficient_scope"' + (f', scope="{scope}"' if scope else "")
    return ApiError(403, message, headers={"WWW-Authenticate": value})


class _Entry:
    __slots__ = ("expires", "key_expires_at", "principal", "revoked")

    def __init__(
        self,
        principal: Principal | None,
        revoked: bool,
        expires: float,
        key_expires_at: datetime | None = None,
    ) -> None:
        self.principal = principal
        self.revoked = revoked
        self.expires = expires
        self.key_expires_at = key_expires_at


class Authenticator:
    """Turns a token into a Principal (or an ApiError 401), with a bounded cache keyed by the
    token's sha256 (the token itself is not kept)."""

    def __init__(
        self, sessionmaker: Callable[[], object], ttl_s: float, touch_interval_s: float = 60.0
    ) -> None:
        self.sessionmaker = sessionmaker
        self.ttl_s = max(0.0, ttl_s)
        self.touch_interval_s = max(0.0, touch_interval_s)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._used: dict[str, datetime] = {}
        self._last_flush = time.monotonic()
        self._flushing = False
        self.touch_failures = 0

    def _cached(self, digest: str) -> _Entry | None:
        with self._lock:
            entry = self._cache.get(digest)
            if entry is None:
                return None
            if entry.expires < time.monotonic():
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return entry

    def _store(self, digest: str, entry: _Entry) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._cache[digest] = entry
            self._cache.move_to_end(digest)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached keys (all, or those of `key_id`): after a revocation through the API."""
        with self._lock:
            if key_id is None:
                self._cache.clear()
                return
            for digest in [d for d, e in self._cache.items() if e.principal and e.principal.key_id == key_id]:
                del self._cache[digest]

    def _lookup(self, token: str) -> _Entry:
        from app.db import keys

        with self.sessionmaker() as s:  # type: ignore[attr-defined]
            row = keys.find_by_token(s, token)
            if row is None:
                return _Entry(None, False, time.monotonic() + self.ttl_s)
            principal = Principal(
                key_id=row.id,
                name=row.name,
                scopes=tuple(row.scopes or ()),
                tasks=tuple(row.tasks) if row.tasks is not None else None,
            )
            revoked = row.revoked_at is not None
            key_expires_at = row.expires_at
        return _Entry(principal, revoked, time.monotonic() + self.ttl_s, key_expires_at)

    def _note_use(self, key_id: str) -> None:
        with self._lock:
            self._used[key_id] = utcnow()
            due = not self._flushing and time.monotonic() - self._last_flush >= self.touch_interval_s
            if due:
                self._flushing = True
        if due:
            threading.Thread(target=self.flush_used, name="prompthub-key-touch", daemon=True).start()

    def flush_used(self) -> bool:
        """Write the collected last-used times; on failure keep them for the next try. Never raises."""
        from app.db import keys

        with self._lock:
            used, self._used = self._used, {}
            self._flushing = True
        try:
            if used:
                with self.sessionmaker() as s:  # type: ignore[attr-defined]
                    keys.touch_many(s, used)
            return True
        except Exception as e:  # a locked or read-only database: keep serving, try later
            self.touch_failures += 1
            log.warning("could not record API keys' last use (%s); will retry", type(e).__name__)
            with self._lock:
                for k, v in used.items():
                    self._used.setdefault(k, v)
            return False
        finally:
            with self._lock:
                self._flushing = False
                self._last_flush = time.monotonic()

    async def authenticate(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        entry = self._cached(digest)
        if entry is None:
            entry = await asyncio.to_thread(self._lookup, token)
            self._store(digest, entry)
        if entry.principal is None:
            raise unauthorized("invalid API key", "invalid_token")
        if entry.revoked:
            raise unauthorized("this API key has been revoked", "invalid_token")
        if entry.key_expires_at is not None and entry.key_expires_at <= utcnow():
            raise unauthorized("this API key has expired", "invalid_token")
        if entry.principal.key_id is not None:
            self._note_use(entry.principal.key_id)
        return entry.principal


def parse_authorization(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` header, or ApiError 401."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized(
            "malformed Authorization header: use 'Authorization: Bearer <key>'", "invalid_request"
        )
    return token


def _authenticator(request: Request) -> Authenticator:
    auth = getattr(request.app.state, "auth", None)
    if auth is None:
        settings = request.app.state.settings
        auth = Authenticator(
            request.app.state.sessionmaker, settings.auth_cache_s, settings.key_touch_interval_s
        )
        request.app.state.auth = auth
    return auth


def is_keyless(request: Request) -> bool:
    """This request came over a loopback connection that needs no key (decided by the edge)."""
    from app.api.edge import keyless_allowed

    keyless = request.scope.get("state", {}).get("keyless")
    if keyless is None:
        keyless = keyless_allowed(request.app.state.settings, request.scope)
    return bool(keyless)


async def current_principal(
    request: Request,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> Principal:
    principal = request.scope.get("state", {}).get("principal")
    if principal is not None:
        return principal  # authenticated by the edge before the body was read
    header = request.headers.get("authorization")
    if header is None:
        if not is_keyless(request):
            raise unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' "
                "(create one with `prompthub keys create`)"
            )
        return Principal.local()
    return await _authenticator(request).authenticate(parse_authorization(header))


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, who must hold `scope` (admin holds every scope)."""

    async def dep(principal: PrincipalDep) -> Principal:
        if not principal.has_scope(scope):
            raise forbidden(f"this API key lacks the {scope!r} scope", scope)
        return principal

    dep.__name__ = f"require_{scope}"
    return dep


def require_task(scope: str) -> Callable[..., Awaitable[Principal]]:
    """`require(scope)`, and the task in the path must be one the key is allowed."""

    async def dep(request: Request, principal: PrincipalDep) -> Principal:
        if not principal.has_scope(scope):
            raise forbidden(f"this API key lacks the {scope!r} scope", scope)
        task = request.path_params.get("task", "")
        if not principal.allows_task(task):
            raise forbidden(f"this API key is not allowed to use task {task!r}")
        return principal

    dep.__name__ = f"require_{scope}_task"
    return dep


async def require_any_scope_task(request: Request, principal: PrincipalDep) -> Principal:
    """Reading a task: any scope, and the task must be allowed."""
    task = request.path_params.get("task")
    if task is not None and not principal.allows_task(task):
        raise forbidden(f"this API key is not allowed to use task {task!r}")
    return principal


async def require_key_admin(principal: PrincipalDep) -> Principal:
    """Managing keys: admin, and not limited to some tasks (such a key could mint an unlimited one)."""
    if not principal.has_scope("admin"):
        raise forbidden("this API key lacks the 'admin' scope", "admin")
    if principal.tasks is not None:
        raise forbidden("managing API keys needs an admin key that is not limited to some tasks", "admin")
    return principal


def check_tasks(principal: Principal, tasks: list[str]) -> None:
    bad = [t for t in tasks if not principal.allows_task(t)]
    if bad:
        raise forbidden(f"this API key is not allowed to use task {bad[0]!r}")


async def metrics_access(request: Request, principal: PrincipalDep) -> Principal:
    """/metrics: admin, or anyone on a keyless loopback connection."""
    if not is_keyless(request) and not principal.has_scope("admin"):
        raise forbidden("this API key lacks the 'admin' scope", "admin")
    return principal


PredictTask = Annotated[Principal, Depends(require_task("predict"))]
Train = Annotated[Principal, Depends(require("train"))]
AdminTask = Annotated[Principal, Depends(require_task("admin"))]
ReadTask = Annotated[Principal, Depends(require_any_scope_task)]
KeyAdmin = Annotated[Principal, Depends(require_key_admin)]
Metrics = Annotated[Principal, Depends(metrics_access)]
