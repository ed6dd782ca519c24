"""`prompthub serve`: the API server under uvicorn, with the limits uvicorn has (connections,
keep-alive, h11 header size) and a header-receipt timeout it lacks (`header_timeout_s`: a connection
that has not sent a request's headers that long after it opened, or after the last answer, is closed).
The body-receipt timeout is in the ASGI layer (app.api.edge)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from app.config import Settings, get_settings

MAX_HEADER_BYTES = 64 * 1024  # h11's limit on a request's head (request line and headers)


def _with_header_timeout(base: type, timeout_s: float | None) -> type:
    """A uvicorn HTTP protocol class that closes connections slow to send a request's headers
    (`timeout_s` seconds; None: PROMPTHUB_HEADER_TIMEOUT_S, read when the first connection opens)."""

    def _timeout() -> float:
        return timeout_s if timeout_s is not None else get_settings().header_timeout_s

    class HeaderTimeout(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None
        _awaiting_headers = True

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._awaiting_headers = True
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(_timeout(), self._header_deadline)

        def _headers_done(self) -> None:
            self._awaiting_headers = False
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self._awaiting_headers and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    if hasattr(base, "on_headers_complete"):  # httptools

        def on_headers_complete(self: Any) -> None:
            base.on_headers_complete(self)
            self._headers_done()

        HeaderTimeout.on_headers_complete = on_headers_complete  # type: ignore[attr-defined]
    else:  # h11: headers are complete once the request line and headers were parsed into a cycle

        def handle_events(self: Any) -> None:
            base.handle_events(self)
            import h11

            if self.conn.their_state in (h11.SEND_BODY, h11.DONE):
                self._headers_done()

        HeaderTimeout.handle_events = handle_events  # type: ignore[attr-defined]
    HeaderTimeout.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeout


def _base_protocol() -> type:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools not installed
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return base


def http_protocol(settings: Settings) -> type:
    return _with_header_timeout(_base_protocol(), settings.header_timeout_s)


_PROTOCOLS: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """`HeaderTimeoutProtocol`: the header-timeout protocol for servers started without `prompthub
    serve`, e.g. `uvicorn --factory app.main:create_app --http app.api.server:HeaderTimeoutProtocol`
    (its timeout is PROMPTHUB_HEADER_TIMEOUT_S). Built on first use, so importing this module does
    not import uvicorn."""
    if name != "HeaderTimeoutProtocol":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _PROTOCOLS:
        _PROTOCOLS[name] = _with_header_timeout(_base_protocol(), None)
    return _PROTOCOLS[name]


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.run / uvicorn.Config keyword arguments for the edge limits."""
    return {
        "http": http_protocol(settings),
        "timeout_keep_alive": int(settings.keep_alive_s),
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = get_settings()
    if getattr(args, "no_worker", False):
        settings = settings.model_copy(update={"embedded_worker": False})
    host = getattr(args, "host", None) or settings.host or "127.0.0.1"
    port = getattr(args, "port", None) or settings.port or 8000
    settings = settings.model_copy(update={"host": host, "port": int(port)})  # auth=auto looks at the bind
    from app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        settings.check_auth()
    except ValueError as e:
        logging.getLogger(__name__).error("%s", e)
        print(f"prompthub serve: {e}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=host,
        port=int(port),
        log_level=settings.log_level,
        access_log=False,  # one access line per request comes from the edge (prompthub.access)
        **({"log_config": None} if settings.log_format == "json" else {}),  # uvicorn's lines as JSON too
        **uvicorn_options(settings),
    )
    return 0
