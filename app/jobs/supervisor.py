"""Supervision of the embedded training worker (the process `app.main`'s lifespan starts).

A thread waits on the worker process. When it exits while the server is not stopping (an OOM kill,
a crash, kill -9), the supervisor at once recovers the job it was running (`recover_stale_jobs`:
the process is gone, so the job is re-queued with attempts + 1, or failed with a reason once its
attempts are spent, as PROMPTHUB_ON_CRASH says), logs it, and starts a new worker after a backoff
that doubles from `worker_restart_backoff_s` up to `worker_restart_backoff_max_s`. After
`worker_max_restarts` restarts within `worker_restart_window_s` it gives up and reports the state
"failed" (a worker that dies at once every time would otherwise eat every queued job's attempts).

With `job_max_memory_mb` set, the supervisor also reads the worker's resident memory while it waits
on it: over the budget it kills the worker, fails the job it was running with that reason (not
re-queued: it would only go over again) and restarts it as above.

`health()` is what /healthz and /readyz report: {"state", "restarts", "pid", "last_exit", ...}.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from app.config import Settings

log = logging.getLogger(__name__)

STARTING, RUNNING, RESTARTING, FAILED, STOPPED = "starting", "running", "restarting", "failed", "stopped"


def _recover_jobs(settings: Settings, fail_reason: str | None = None) -> list[str]:
    """Recover the dead worker's jobs; with `fail_reason` they are failed with it, not re-queued."""
    from app.db import job_queue
    from app.db.session import get_sessionmaker

    with get_sessionmaker(settings.database_url)() as s:
        return job_queue.recover_stale_jobs(
            s,
            stale_after_s=settings.job_stale_s,
            on_crash="fail" if fail_reason else settings.on_crash,
            max_attempts=settings.max_job_attempts,
            fail_reason=(lambda _attempt, _worker: fail_reason) if fail_reason else None,
        )


def rss_mib(pid: int) -> float | None:
    """Resident memory of process `pid` in MiB (from /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class WorkerSupervisor:
    """Starts the worker (`spawn`), restarts it with backoff when it dies, stops it (`stop`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        spawn: Callable[[Settings], subprocess.Popen] | None = None,
        stop: Callable[[subprocess.Popen], int | None] | None = None,
        recover: Callable[..., list[str]] | None = None,
    ) -> None:
        from app.jobs.process import spawn_embedded_worker, stop_embedded_worker

        self.settings = settings
        self._spawn = spawn or spawn_embedded_worker
        self._stop_proc = stop or stop_embedded_worker
        self._recover = recover or _recover_jobs
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.proc: subprocess.Popen | None = None
        self.state = STOPPED
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_error: str | None = None
        self.recovered_jobs: list[str] = []
        self._recent: deque[float] = deque()  # monotonic times of recent restarts
        self.backoffs: list[float] = []  # the delays waited before each restart
        self._over_memory: str | None = None  # why the watcher killed the worker (memory budget)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WorkerSupervisor:
        with self._lock:
            self.state = STARTING
            self.proc = self._spawn(self.settings)
            self.state = RUNNING
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int | None:
        """Stop supervising and stop the worker (SIGTERM: it re-queues its job); its exit code."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        code = self._stop_proc(proc) if proc is not None else None
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self.state = STOPPED
        return code

    def health(self) -> dict[str, Any]:
        with self._lock:
            proc = self.proc
            return {
                "state": self.state,
                "restarts": self.restarts,
                "pid": proc.pid if proc is not None and proc.poll() is None else None,
                "last_exit": self.last_exit,
                "error": self.last_error,
            }

    # ------------------------------------------------------------------ watching
    def _backoff(self) -> float:
        base = max(0.0, self.settings.worker_restart_backoff_s)
        n = len(self._recent)
        return min(self.settings.worker_restart_backoff_max_s, base * (2**n)) if base else 0.0

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return
            try:
                code = proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                self._check_memory(proc)
                continue
            if self._stopping.is_set():
                return
            self._on_exit(code)
            if not self._restart():
                return

    def _check_memory(self, proc: subprocess.Popen) -> None:
        budget = self.settings.job_max_memory_mb
        if not budget or self._over_memory is not None:
            return
        used = rss_mib(proc.pid)
        if used is None or used <= budget:
            return
        self._over_memory = (
            f"the worker went over its memory budget ({used:.0f} MiB resident, "
            f"PROMPTHUB_JOB_MAX_MEMORY_MB={budget}) and was stopped"
        )
        log.error("embedded worker (pid %d): %s", proc.pid, self._over_memory)
        proc.kill()

    def _on_exit(self, code: int) -> None:
        over, self._over_memory = self._over_memory, None
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if over is None:
            log.error(
                "embedded worker (pid %d) died unexpectedly: %s", self.proc.pid if self.proc else -1, why
            )
        with self._lock:
            self.last_exit = code
            self.last_error = over or f"worker died: {why}"
            self.state = RESTARTING
        try:
            ids = self._recover(self.settings, over) if over else self._recover(self.settings)
        except Exception:  # the database may be down: the next worker's own recovery retries
            log.exception("could not recover the dead worker's jobs; the next worker will")
            ids = []
        for job_id in ids:
            log.warning(
                "job %s of the dead worker recovered (%s)", job_id, "fail" if over else self.settings.on_crash
            )
        self.recovered_jobs += ids

    def _restart(self) -> bool:
        now = time.monotonic()
        window = self.settings.worker_restart_window_s
        while self._recent and now - self._recent[0] > window:
            self._recent.popleft()
        if len(self._recent) >= self.settings.worker_max_restarts:
            log.error(
                "embedded worker died %d times within %.0f s; not restarting it (training is down "
                "until the server restarts)",
                len(self._recent),
                window,
            )
            with self._lock:
                self.state = FAILED
            return False
        delay = self._backoff()
        self.backoffs.append(delay)
        log.warning("restarting the embedded worker in %.1f s", delay)
        if self._stopping.wait(delay):
            return False
        with self._lock:
            if self._stopping.is_set():
                return False
            try:
                self.proc = self._spawn(self.settings)
            except Exception as e:
                log.exception("could not restart the embedded worker")
                self.last_error = f"restart failed: {e}"
                self.state = FAILED
                return False
            self._recent.append(time.monotonic())
            self.restarts += 1
            self.state = RUNNING
        log.warning("embedded worker restarted (pid %d, restart %d)", self.proc.pid, self.restarts)
        return True
