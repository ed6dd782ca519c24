"""The worker as a process: `prompthub worker` (the configured executor's worker), and the
embedded worker a server starts as its child (and stops with it)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from app.config import Settings, get_settings
from app.db.session import REPO_ROOT, run_migrations
from app.jobs.worker import Worker

log = logging.getLogger(__name__)

PARENT_PID_ENV = "PROMPTHUB_WORKER_PARENT_PID"


def _watch_parent(parent_pid: int, stop_event: threading.Event) -> None:
    """An embedded worker stops when the server that started it is gone."""

    def watch() -> None:
        while not stop_event.wait(1.0):
            if os.getppid() != parent_pid:
                log.warning("worker: parent process %d is gone; stopping", parent_pid)
                stop_event.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_command(args: argparse.Namespace) -> int:
    """`prompthub worker [--once] [--poll S]`: the configured executor's worker (PROMPTHUB_EXECUTOR:
    local, this module's poller; celery, app.jobs.celery_worker)."""
    settings = get_settings()
    if settings.executor == "celery":
        if getattr(args, "once", False) or getattr(args, "poll", None) is not None:
            print("prompthub worker: --once and --poll are for PROMPTHUB_EXECUTOR=local", file=sys.stderr)
            return 2
        from app.jobs.celery_worker import celery_worker_command

        return celery_worker_command(settings)
    if getattr(args, "poll", None) is not None:
        settings = settings.model_copy(update={"worker_poll_s": float(args.poll)})
    from app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    run_migrations(settings.database_url)
    stop_event = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("worker: signal %d, stopping after the current step", signum)
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.environ.get(PARENT_PID_ENV)
    if parent and parent.isdigit():
        _watch_parent(int(parent), stop_event)
    worker = Worker(settings, stop_event=stop_event)
    try:
        if getattr(args, "once", False):
            worker.run_once()
        else:
            worker.run_forever(stop_event)
    except Exception as e:
        log.exception("worker failed")
        print(f"worker failed: {e}", file=sys.stderr)
        return 1
    return 0


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as PROMPTHUB_* variables, so a child process sees exactly these settings."""
    env: dict[str, str] = {}
    for key, value in settings.model_dump().items():
        if value is None:  # unset optional settings stay unset (the child gets the same default)
            continue
        env[f"PROMPTHUB_{key.upper()}"] = (
            ("true" if value else "false") if isinstance(value, bool) else str(value)
        )
    return env


def spawn_embedded_worker(settings: Settings) -> subprocess.Popen:
    """Start `python -m app.cli worker` with this process's environment and settings."""
    env = os.environ.copy()
    env.update(settings_env(settings))
    env[PARENT_PID_ENV] = str(os.getpid())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env, cwd=os.getcwd())
    log.info("embedded worker started (pid %d)", proc.pid)
    return proc


def stop_embedded_worker(proc: subprocess.Popen | None, timeout: float = 20.0) -> int | None:
    """SIGTERM (the worker re-queues its job), then SIGKILL after `timeout`; returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded worker did not stop in %.0fs; killing it", timeout)
            proc.kill()
            proc.wait()
    return proc.returncode
