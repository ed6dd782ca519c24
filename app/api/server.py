"""`prompthub serve`: the API server under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

from app.config import get_settings


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = get_settings()
    if getattr(args, "no_worker", False):
        settings = settings.model_copy(update={"embedded_worker": False})
    host = getattr(args, "host", None) or settings.host or "127.0.0.1"
    port = getattr(args, "port", None) or settings.port or 8000
    settings = settings.model_copy(update={"host": host, "port": int(port)})  # auth=auto looks at the bind
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        access_log=False,
        timeout_keep_alive=int(settings.keep_alive_s),
    )
    return 0
