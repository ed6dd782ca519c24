#!/usr/bin/env python
"""The image's HEALTHCHECK: which check depends on what the container runs (its PID 1's command).

- `prompthub serve` (the API): GET /readyz on PROMPTHUB_PORT answers 200 (the backbone is loaded
  and predictions can be served), so dependants and load balancers wait on readiness, not liveness;
- `prompthub worker`: the worker's own heartbeat, the `workers` row it refreshes every
  PROMPTHUB_JOB_HEARTBEAT_S for this host (container hostname), newer than PROMPTHUB_JOB_STALE_S.
  It runs no HTTP server, so a port check would mark it unhealthy forever.

`prompthub-healthcheck api|worker` forces one. Exit 0 healthy, 1 unhealthy (the reason on stdout).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from datetime import UTC, datetime


def role() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    try:
        with open("/proc/1/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return "api"
    return "worker" if b"worker" in args else "api"


def check_api() -> str | None:
    port = os.environ.get("PROMPTHUB_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as r:
            return None if r.status == 200 else f"/readyz answered {r.status}"
    except Exception as e:  # refused, 503 while loading, timeout
        return f"/readyz: {e}"


def check_worker() -> str | None:
    from sqlalchemy import select

    from app.config import get_settings
    from app.db.models import WorkerRow
    from app.db.session import make_engine

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            query = select(WorkerRow.heartbeat_at).where(WorkerRow.host == socket.gethostname())
            beats = list(conn.execute(query).scalars())
    except Exception as e:
        return f"cannot read the workers table: {e}"
    finally:
        engine.dispose()
    if not beats:
        return f"no worker of host {socket.gethostname()} has registered"
    newest = max(b if b.tzinfo else b.replace(tzinfo=UTC) for b in beats)
    age = (datetime.now(UTC) - newest).total_seconds()
    if age > settings.job_stale_s:
        return f"last heartbeat {age:.0f} s ago (stale after {settings.job_stale_s:g} s)"
    return None


def main() -> int:
    which = role()
    problem = check_worker() if which == "worker" else check_api()
    print(f"{which}: {problem or 'healthy'}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
