"""create_app(): wiring only. The database sessions, the prompt store and the dataset files are made
here and put on app.state; the hub gets a resolve function (through app.versions) and the store's
read. The lifespan migrates the database, syncs the prompt store into it (app.ops.maintenance),
loads the backbones in the background (/healthz answers at once, /readyz flips when ready), starts
the batcher and, when configured, the embedded training worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy.orm import Session

from app.api.auth import Authenticator
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.metrics import ApiMetrics, install_metrics
from app.api.routes import ROUTERS
from app.config import Settings, get_settings
from app.db.session import get_sessionmaker
from app.serving.hub import Hub, ResolveFn, TaskNotFound
from app.store import DatasetFiles, PromptStore

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


def make_hub(settings: Settings, *, sessionmaker: Callable[[], Session] | None = None, **kw: Any) -> Hub:
    """A hub reading the configured database and prompt store (`kw`: backbones, cache)."""
    sessionmaker = sessionmaker or get_sessionmaker(settings.database_url)
    store = PromptStore(settings.store_dir)
    return Hub(settings, resolve=make_resolver(sessionmaker), read=store.read_version, **kw)


def _prepare_database(settings: Settings, sessionmaker: Callable[[], Session], store: PromptStore) -> None:
    from app.db.session import run_migrations
    from app.ops.maintenance import startup_sync

    run_migrations(settings.database_url)
    with sessionmaker() as s:
        startup_sync(s, store, dataset_retention_days=settings.dataset_retention_days)


def announce_auth(settings: Settings) -> str:
    """The line logged at start about API keys."""
    if not settings.keys_required:
        if settings.auth == "off":
            line = f"serving without API keys because PROMPTHUB_AUTH=off and bound to {settings.host}"
        else:
            line = f"serving without API keys because bound to {settings.host}"
        log.warning("%s: anyone who can reach this address has every scope", line)
        return line
    line = f"API keys required (PROMPTHUB_AUTH={settings.auth}, bound to {settings.host})"
    log.info("%s", line)
    return line


MULTIPART_SLACK_BYTES = 64 * 1024  # boundaries and form fields around an uploaded file


def _body_limit(settings: Settings, path: str) -> int:
    if path.startswith("/datasets"):
        return settings.max_upload_bytes + MULTIPART_SLACK_BYTES  # the file itself is checked exactly
    return settings.max_body_bytes


def create_app(settings: Settings | None = None, hub: Hub | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_auth()  # auth=off is refused on any address but loopback

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub: Hub = app.state.hub
        announce_auth(settings)
        await asyncio.to_thread(_prepare_database, settings, app.state.sessionmaker, app.state.store)
        hub.start(background=True)
        worker = None
        if settings.embedded_worker:
            from app.jobs.worker import spawn_embedded_worker

            worker = spawn_embedded_worker(settings)
        try:
            yield
        finally:
            if worker is not None:
                from app.jobs.worker import stop_embedded_worker

                await asyncio.to_thread(stop_embedded_worker, worker)
            hub.close()

    app = FastAPI(
        title="PromptHub",
        version="0.1.0",
        summary="P-Tuning v2 prompts on one frozen encoder, served as a multi-task hub",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = get_sessionmaker(settings.database_url)
    app.state.store = PromptStore(settings.store_dir)
    app.state.datasets = DatasetFiles(settings.data_dir)
    app.state.hub = hub or make_hub(settings, sessionmaker=app.state.sessionmaker)
    app.state.metrics = ApiMetrics(app.state.hub, app.state.sessionmaker)
    app.state.auth = Authenticator(app.state.sessionmaker, settings.auth_cache_s)
    for router in ROUTERS:
        app.include_router(router)
    install_error_handlers(app)
    install_metrics(app, app.state.metrics)
    app.add_middleware(BodySizeLimit, limit_for=lambda path: _body_limit(settings, path))
    return app
