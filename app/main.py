"""create_app(): wiring only. The database sessions, the prompt store and the dataset files are made
here and put on app.state; the hub gets a resolve function (through app.versions) and the store's
read. The lifespan migrates the database, syncs the prompt store into it (app.ops.maintenance),
loads the backbones in the background (/healthz answers at once, /readyz flips when ready), starts
the batcher and, when configured, the embedded training worker under a supervisor
(app.jobs.supervisor: restarted with backoff when it dies, its job recovered at once)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy.orm import Session

from app.api.auth import Authenticator
from app.api.docs import install_docs
from app.api.edge import EdgeGuard, RateLimits
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.metrics import ApiMetrics, install_metrics
from app.api.openapi import install_openapi
from app.api.routes import ROUTERS
from app.config import Settings, get_settings
from app.db.session import get_sessionmaker
from app.serving.hub import Hub, ResolveFn, TaskNotFound
from app.store import DatasetFiles, Store, open_datasets, open_store

log = logging.getLogger(__name__)


def make_resolver(sessionmaker: Callable[[], Session]) -> ResolveFn:
    """The hub's resolve function: one query through app.versions, its NotFound as TaskNotFound."""
    from app import versions

    def resolve(name: str, version: int | None) -> tuple[int, str]:
        with sessionmaker() as s:
            try:
                return versions.resolve(s, name, version)
            except versions.VersionNotFound as e:
                raise TaskNotFound(e.name, e.version) from None

    return resolve


def version_cache_ttl(settings: Settings) -> float:
    """The version cache's TTL: PostgreSQL only (its NOTIFY reaches every replica); SQLite keeps
    one query a prediction, so the worker process's versions are served at once."""
    from app.db.session import is_sqlite

    return 0.0 if is_sqlite(settings.database_url) else settings.version_cache_ttl_s


def make_hub(settings: Settings, *, sessionmaker: Callable[[], Session] | None = None, **kw: Any) -> Hub:
    """A hub reading the configured database and prompt store (`kw`: backbones, cache). Its version
    lookups are cached on PostgreSQL (app.serving.versions_cache), invalidated at once by this
    process's own commits (app.db.notify.subscribe) and by other processes' NOTIFY (the listener
    the lifespan starts)."""
    from app.db import notify
    from app.serving.versions_cache import CachedResolver

    sessionmaker = sessionmaker or get_sessionmaker(settings.database_url)
    store = open_store(settings)  # the local folder, or S3 with a node-local read cache
    resolve = CachedResolver(make_resolver(sessionmaker), version_cache_ttl(settings), not_found=TaskNotFound)
    hub = Hub(settings, resolve=resolve, read=store.read_version, **kw)
    if resolve.ttl_s > 0:
        notify.subscribe(hub.invalidate)
    return hub


def start_version_listener(settings: Settings, hub: Hub) -> Any:
    """The LISTEN thread that invalidates `hub`'s version cache (None when nothing is cached)."""
    if version_cache_ttl(settings) <= 0:
        return None
    from app.db.notify import VersionListener

    return VersionListener(settings.database_url, hub.invalidate).start()


def _prepare_database(
    settings: Settings,
    sessionmaker: Callable[[], Session],
    store: Store,
    datasets: DatasetFiles | None = None,
) -> None:
    from app.db.session import run_migrations

    run_migrations(settings.database_url)  # once: replicas wait on an advisory lock (alembic/env.py)
    sync_at_start(settings, sessionmaker, store, datasets)


def sync_at_start(
    settings: Settings,
    sessionmaker: Callable[[], Session],
    store: Store,
    datasets: DatasetFiles | None = None,
) -> None:
    """The start-up store sync and the bootstrap key, one replica at a time (app.db.session.startup_lock)."""
    from app.db.idempotency import purge_expired as purge_expired_idempotency_keys
    from app.db.session import startup_lock
    from app.ops.maintenance import startup_sync

    with startup_lock(settings.database_url):
        with sessionmaker() as s:
            startup_sync(s, store, dataset_retention_days=settings.dataset_retention_days, datasets=datasets)
            purge_expired_idempotency_keys(s)  # expired Idempotency-Keys of POST /train
        _prepare_keys(settings, sessionmaker)


def announce_auth(settings: Settings) -> str:
    """The line logged at start about API keys (decided per connection by app.api.edge)."""
    if settings.auth == "required":
        line = "API keys required on every connection (PROMPTHUB_AUTH=required)"
        log.info("%s", line)
        return line
    line = (
        f"API keys required except on connections from loopback to a loopback socket "
        f"(PROMPTHUB_AUTH={settings.auth}); those are keyless, with every scope, for Host "
        "localhost/127.0.0.1/::1 and no foreign Origin"
    )
    log.warning("%s", line)
    return line


def _prepare_keys(settings: Settings, sessionmaker: Callable[[], Session]) -> None:
    """The bootstrap admin key from PROMPTHUB_BOOTSTRAP_ADMIN_KEY: created on the first start."""
    if not settings.bootstrap_admin_key:
        return
    from app.db.keys import ensure_bootstrap_key
    from app.security import audit

    with sessionmaker() as s:
        row, created = ensure_bootstrap_key(s, settings.bootstrap_admin_key)
    if created:
        audit(
            "key.create",
            "bootstrap (PROMPTHUB_BOOTSTRAP_ADMIN_KEY)",
            key_id=row.id,
            name=row.name,
            scopes=row.scopes,
        )
    elif row.revoked_at is not None:
        log.warning("the bootstrap admin key %s from the environment is revoked: it is refused", row.id)
    else:
        log.info("bootstrap admin key %s recognised", row.id)


MULTIPART_SLACK_BYTES = 64 * 1024  # boundaries and form fields around an uploaded file


def _body_limit(settings: Settings, path: str) -> int:
    if path.startswith("/datasets"):
        return settings.max_upload_bytes + MULTIPART_SLACK_BYTES  # the file itself is checked exactly
    return settings.max_body_bytes


def create_app(settings: Settings | None = None, hub: Hub | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_auth()  # auth=off is refused on any address but loopback
    if settings.bootstrap_admin_key:
        from app.security import check_bootstrap_token

        check_bootstrap_token(settings.bootstrap_admin_key)  # a malformed one stops the start here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub: Hub = app.state.hub
        announce_auth(settings)
        await asyncio.to_thread(
            _prepare_database, settings, app.state.sessionmaker, app.state.store, app.state.datasets
        )
        listener = start_version_listener(settings, hub)  # fleet: other replicas' versions
        app.state.version_listener = listener
        hub.start(background=True)
        supervisor = None
        if settings.executor == "celery":  # import and configure Celery now, not in the first POST /train
            from app.jobs.celery_app import celery_app

            await asyncio.to_thread(celery_app, settings)
        if settings.embedded_worker and settings.executor == "local":  # celery: `prompthub worker`s
            from app.jobs.supervisor import WorkerSupervisor

            supervisor = WorkerSupervisor(settings).start()  # restarted with backoff when it dies
        app.state.worker = supervisor
        try:
            yield
        finally:
            if supervisor is not None:
                await asyncio.to_thread(supervisor.stop)
            hub.close()
            if listener is not None:
                await asyncio.to_thread(listener.stop)

    app = FastAPI(
        title="PromptHub",
        version="0.1.0",
        summary="P-Tuning v2 prompts on one frozen encoder, served as a multi-task hub",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = get_sessionmaker(settings.database_url)
    app.state.store = open_store(settings)  # PROMPTHUB_STORE_URL: the local folder or S3
    app.state.datasets = open_datasets(settings, app.state.store)
    app.state.hub = hub or make_hub(settings, sessionmaker=app.state.sessionmaker)
    app.state.worker = None  # the embedded worker's supervisor, set by the lifespan
    app.state.metrics = ApiMetrics(app.state.hub, app.state.sessionmaker)
    app.state.auth = Authenticator(
        app.state.sessionmaker, settings.auth_cache_s, settings.key_touch_interval_s
    )
    for router in ROUTERS:
        app.include_router(router)
    install_docs(app)  # /docs and /redoc from packaged assets, not a CDN
    install_error_handlers(app)
    install_metrics(app, app.state.metrics)
    install_openapi(app)  # typed /train body, task-name patterns
    app.add_middleware(BodySizeLimit, limit_for=lambda path: _body_limit(settings, path))
    app.add_middleware(  # outermost: who is calling, before any body is read (app.api.edge)
        EdgeGuard,
        settings=settings,
        authenticate=lambda token: app.state.auth.authenticate(token),
        rate_limits=RateLimits(settings.key_rate_limit, settings.key_quota),
        on_refused=app.state.metrics.refused,
    )
    return app
