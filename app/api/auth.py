"""Access control for the routes: a bearer API key, its scopes and its task allow-list.

Keys are required when `Settings.keys_required` (PROMPTHUB_AUTH=required, or auto on any address but
loopback). When they are not, a request without an Authorization header is the local operator with
every scope; a request that does send a key is still held to that key.

401 (with `WWW-Authenticate: Bearer`): no key, a malformed header, an unknown or revoked key.
403: the key lacks the scope, or is not allowed the task.

Verified keys are held in a small per-app cache for `auth_cache_s` seconds (a key revoked through
the API is dropped from it at once; one revoked with the CLI in another process is refused within
that many seconds). `last_used_at` is written when a key is read from the database, so at most once
per key and cache period.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.errors import ApiError
from app.security import Principal

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
    __slots__ = ("expires", "principal", "revoked")

    def __init__(self, principal: Principal | None, revoked: bool, expires: float) -> None:
        self.principal = principal
        self.revoked = revoked
        self.expires = expires


class Authenticator:
    """Turns a token into a Principal (or an ApiError 401), with a bounded cache keyed by the
    token's sha256 (the token itself is not kept)."""

    def __init__(self, sessionmaker: Callable[[], object], ttl_s: float) -> None:
        self.sessionmaker = sessionmaker
        self.ttl_s = max(0.0, ttl_s)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

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
            if not revoked:
                keys.touch(s, row.id)
        return _Entry(principal, revoked, time.monotonic() + self.ttl_s)

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
        return entry.principal


def _authenticator(request: Request) -> Authenticator:
    auth = getattr(request.app.state, "auth", None)
    if auth is None:
        auth = Authenticator(request.app.state.sessionmaker, request.app.state.settings.auth_cache_s)
        request.app.state.auth = auth
    return auth


async def current_principal(
    request: Request,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> Principal:
    header = request.headers.get("authorization")
    if header is None:
        if request.app.state.settings.keys_required:
            raise unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' "
                "(create one with `prompthub keys create`)"
            )
        return Principal.local()
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized(
            "malformed Authorization header: use 'Authorization: Bearer <key>'", "invalid_request"
        )
    return await _authenticator(request).authenticate(token)


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
    """/metrics: admin, or anyone when keys are not required (loopback, auth=auto)."""
    if request.app.state.settings.keys_required and not principal.has_scope("admin"):
        raise forbidden("this API key lacks the 'admin' scope", "admin")
    return principal


PredictTask = Annotated[Principal, Depends(require_task("predict"))]
Train = Annotated[Principal, Depends(require("train"))]
AdminTask = Annotated[Principal, Depends(require_task("admin"))]
ReadTask = Annotated[Principal, Depends(require_any_scope_task)]
KeyAdmin = Annotated[Principal, Depends(require_key_admin)]
Metrics = Annotated[Principal, Depends(metrics_access)]
