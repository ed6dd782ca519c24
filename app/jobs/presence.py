"""A worker's row in the `workers` table (GET /workers): inserted at start, its heartbeat and current
job refreshed every `job_heartbeat_s` by a thread, deleted on a clean stop. Best effort: a database
blip is logged and tried again at the next beat, never stops the worker."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.db import workers as db_workers

log = logging.getLogger(__name__)


class WorkerPresence:
    def __init__(
        self,
        sessionmaker: Callable[[], Session],
        worker_id: str,
        *,
        executor: str,
        device_class: str,
        device: str,
        queue: str | None,
        interval_s: float,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.worker_id = worker_id
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "executor": executor,
            "device_class": device_class,
            "device": device,
            "queue": queue,
        }
        self.interval_s = max(0.05, interval_s)
        self.job_id: str | None = None
        self._stop = threading.Event()
        self._registered = False
        self._thread: threading.Thread | None = None

    def _register(self) -> None:
        with self.sessionmaker() as s:
            db_workers.register_worker(s, id=self.worker_id, **self.info)  # type: ignore[arg-type]
        self._registered = True

    def beat(self) -> None:
        try:
            if not self._registered:
                self._register()
                if self.job_id is None:
                    return
            with self.sessionmaker() as s:
                if not db_workers.worker_heartbeat(s, self.worker_id, self.job_id):
                    self._registered = False
                    self._register()
                    with self.sessionmaker() as s2:
                        db_workers.worker_heartbeat(s2, self.worker_id, self.job_id)
        except Exception:
            log.warning("worker %s: heartbeat to the workers table failed", self.worker_id, exc_info=True)

    def set_job(self, job_id: str | None) -> None:
        """The job this worker runs now (None: idle), written at once."""
        self.job_id = job_id
        self.beat()

    def start(self) -> WorkerPresence:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="worker-presence", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            with self.sessionmaker() as s:
                db_workers.remove_worker(s, self.worker_id)
        except Exception:
            log.warning("worker %s: could not remove its row from the workers table", self.worker_id)
