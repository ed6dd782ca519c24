"""The job being trained, as the worker sees it: the stop flag (a cancel, a stopping worker, the
wall-time budget), the heartbeat thread, and the progress written to the job's row (throttled, with
the per-epoch history)."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from app import faults
from app.db import jobs as db_jobs
from app.engine.train_config import Progress

if TYPE_CHECKING:
    from app.jobs.worker import Worker

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.5  # at most 2 progress writes a second (plus always the last)


def jsonable(value: Any) -> Any:
    """Plain JSON (numpy/torch scalars and the like become floats or strings)."""

    def default(o: Any) -> Any:
        try:
            return float(o)
        except (TypeError, ValueError):
            return str(o)

    return json.loads(json.dumps(value, default=default))


class JobRun:
    """State of the job being trained: the stop flag, throttled progress, the heartbeat thread."""

    def __init__(self, worker: Worker, job_id: str) -> None:
        self.worker = worker
        self.job_id = job_id
        self.stop_requested = threading.Event()  # cancel asked for, or the job is no longer ours
        self.started = time.monotonic()
        self.budget_s = worker.settings.job_max_seconds
        self.over_budget = False  # the job ran past PROMPTHUB_JOB_MAX_SECONDS
        self._done = threading.Event()
        self._last_write = 0.0
        self._pending: dict[str, Any] | None = None
        self._latest: dict[str, Any] | None = None  # the last progress reported, written or not
        self._history: list[dict[str, Any]] = []  # per-epoch loss and eval metrics, shown while it runs
        self.resumed_from: int | None = None  # the step a requeued job resumed from (its saved state)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> JobRun:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _write(self, progress: dict[str, Any] | None) -> None:
        try:
            with self.worker.sessionmaker() as s:
                if db_jobs.heartbeat(s, self.job_id, progress, worker_id=self.worker.worker_id):
                    self.stop_requested.set()
        except Exception:  # the database may blip; the next beat tries again
            log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)

    def _beat(self) -> None:
        interval = max(0.05, self.worker.settings.job_heartbeat_s)
        while not self._done.wait(interval):
            with self._lock:
                self._write(None)

    def should_stop(self) -> bool:
        """Checked by the training loop between steps: a cancel, a stopping worker, or the job's
        wall-time budget spent."""
        if self.budget_s and time.monotonic() - self.started > self.budget_s:
            self.over_budget = True
            return True
        return self.stop_requested.is_set() or self.worker.stop_event.is_set()

    def progress(self, p: Progress) -> None:
        faults.step_delay()  # tests only (0 unless PROMPTHUB_FAULT_STEP_DELAY_S is set)
        doc = {
            "step": p.step,
            "total": p.total,
            "epoch": round(float(p.epoch), 4) if p.epoch is not None else None,
            "loss": float(p.loss) if p.loss is not None else None,
            "message": p.message or "training",
        }
        if p.message.startswith("resumed from step"):
            self.resumed_from = p.step
        if self.resumed_from is not None:
            doc["resumed_from_step"] = self.resumed_from
        if getattr(p, "task", None):
            doc["task"] = p.task
        stage = getattr(p, "stage", None)
        if stage:
            doc["stage"] = stage
        if p.metrics is not None:  # an epoch ended: keep its record and write it at once
            record = {"epoch": round(p.epoch), "loss": p.loss, "metrics": p.metrics}
            self._history.append(jsonable({**record, "stage": stage} if stage else record))
        if self._history:
            doc["history"] = list(self._history)
        now = time.monotonic()
        last = (bool(p.total) and p.step >= p.total and not p.message) or p.metrics is not None
        with self._lock:
            self._latest = doc
            if last or now - self._last_write >= PROGRESS_MIN_INTERVAL_S:
                self._write(doc)
                self._last_write = now
                self._pending = None
            else:
                self._pending = doc

    def flush(self, message: str | None = None) -> None:
        """Write the last progress (always), optionally with a final message."""
        with self._lock:
            doc = self._pending
            self._pending = None
            if message is not None:  # the final word keeps the last step, loss and history
                doc = {**(doc or self._latest or {}), "message": message}
            if doc is not None:
                self._write(doc)
