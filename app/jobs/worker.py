"""The training worker: a process of its own that takes queued jobs from the database, trains them
on the shared frozen backbone, writes the new version to the prompt store (file first, then the
database row) and activates it, so the server serves it at once.

Liveness: a background thread refreshes the job's heartbeat; a worker that dies leaves a job whose
heartbeat goes stale (or whose process is gone), and `recover_stale_jobs`, run by every worker at
start and then periodically, re-queues or fails it. SIGTERM/SIGINT stop between two training steps
and put the current job back in the queue.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from app import versions
from app.config import Settings, get_settings
from app.db import datasets as db_datasets
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.db.models import CANCELLED, FAILED, SUCCEEDED
from app.db.session import REPO_ROOT, get_sessionmaker, run_migrations
from app.engine.backbone import Backbone, load_backbone
from app.engine.checkpoint import checkpoint_bytes, load_checkpoint_bytes
from app.engine.data import DataError
from app.engine.model import ServingTask
from app.engine.options import build_training, validate_training
from app.engine.train import Cancelled, Progress, TrainConfig, TrainResult, train_multitask, train_task
from app.jobs.payload import DataRef, load_split, training_doc
from app.jobs.presence import WorkerPresence
from app.store import StoreError, open_datasets, open_store

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.5  # at most 2 progress writes a second (plus always the last)
PARENT_PID_ENV = "PROMPTHUB_WORKER_PARENT_PID"


def _jsonable(value: Any) -> Any:
    """Plain JSON (numpy/torch scalars and the like become floats or strings)."""

    def default(o: Any) -> Any:
        try:
            return float(o)
        except (TypeError, ValueError):
            return str(o)

    return json.loads(json.dumps(value, default=default))


class _JobRun:
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
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> _JobRun:
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
        doc = {
            "step": p.step,
            "total": p.total,
            "epoch": round(float(p.epoch), 4) if p.epoch is not None else None,
            "loss": float(p.loss) if p.loss is not None else None,
            "message": p.message or "training",
        }
        if getattr(p, "task", None):
            doc["task"] = p.task
        if p.metrics is not None:  # an epoch ended: keep its record and write it at once
            self._history.append(_jsonable({"epoch": round(p.epoch), "loss": p.loss, "metrics": p.metrics}))
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


class Worker:
    def __init__(
        self,
        settings: Settings,
        worker_id: str | None = None,
        *,
        backbone: Backbone | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or db_jobs.make_worker_id()
        self.sessionmaker = get_sessionmaker(settings.database_url)
        self.store = open_store(settings)  # the local folder or S3 (PROMPTHUB_STORE_URL)
        self.datasets = open_datasets(settings, self.store)
        self.stop_event = stop_event or threading.Event()
        self._backbone = backbone
        self._last_recovery: float | None = None
        self.presence: WorkerPresence | None = None  # its row in the workers table (GET /workers)

    # ------------------------------------------------------------------ lifecycle
    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            device = self.settings.device_list[0]
            log.info("worker %s: loading backbone %s on %s", self.worker_id, self.settings.backbone, device)
            self._backbone = load_backbone(self.settings.backbone, device=device)
        return self._backbone

    def recover(self) -> list[str]:
        with self.sessionmaker() as s:
            ids = db_jobs.recover_stale_jobs(
                s,
                stale_after_s=self.settings.job_stale_s,
                on_crash=self.settings.on_crash,
                max_attempts=self.settings.max_job_attempts,
            )
        self._last_recovery = time.monotonic()
        for job_id in ids:
            log.warning("recovered job %s left running by a dead worker (%s)", job_id, self.settings.on_crash)
        return ids

    def _maybe_recover(self) -> None:
        every = max(1.0, self.settings.job_stale_s / 2)
        if self._last_recovery is None or time.monotonic() - self._last_recovery >= every:
            self.recover()

    def run_once(self) -> bool:
        """Take one queued job and run it to the end; False when there was none."""
        self._maybe_recover()
        backbone = self.backbone  # loaded before claiming: a broken backbone must not eat jobs
        with self.sessionmaker() as s:
            job = db_jobs.claim_next_job(s, self.worker_id, max_running=self.settings.max_running_jobs)
            if job is None:
                return False
            job_id, kind, payload = job.id, job.kind, dict(job.payload or {})
        log.info("worker %s: job %s (%s) started", self.worker_id, job_id, kind)
        if self.presence is not None:
            self.presence.set_job(job_id)
        try:
            self._run_job(job_id, kind, payload, backbone)
        finally:
            if self.presence is not None:
                self.presence.set_job(None)
        return True

    def start_presence(self, executor: str, device_class: str, queue: str | None = None) -> WorkerPresence:
        self.presence = WorkerPresence(
            self.sessionmaker,
            self.worker_id,
            executor=executor,
            device_class=device_class,
            device=self.settings.device_list[0],
            queue=queue,
            interval_s=self.settings.job_heartbeat_s,
        ).start()
        return self.presence

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        if stop_event is not None:
            self.stop_event = stop_event
        self.recover()
        _ = self.backbone
        log.info("worker %s ready (poll every %.2fs)", self.worker_id, self.settings.worker_poll_s)
        device = self.settings.device_list[0].lower()
        self.start_presence("local", "gpu" if device.startswith("cuda") else "cpu")
        try:
            while not self.stop_event.is_set():
                try:
                    busy = self.run_once()
                except Exception:  # e.g. the database is down: wait and retry
                    log.exception("worker %s: poll failed", self.worker_id)
                    busy = False
                    self.stop_event.wait(max(1.0, self.settings.worker_poll_s * 4))
                if not busy:
                    self.stop_event.wait(self.settings.worker_poll_s)
        finally:
            self.presence.stop()
        log.info("worker %s stopped", self.worker_id)

    # ------------------------------------------------------------------ one job
    def _finish(self, job_id: str, state: str, **kw: Any) -> None:
        with self.sessionmaker() as s:
            db_jobs.finish_job(s, job_id, state, worker_id=self.worker_id, **kw)

    def _run_job(self, job_id: str, kind: str, payload: dict[str, Any], backbone: Backbone) -> str:
        """Train, publish and finish the job; returns its final state, or "released" when the worker
        is stopping and put it back in the queue."""
        with _JobRun(self, job_id) as run:
            try:
                if kind == "multitask":
                    result, metrics = self._train_multitask(job_id, payload, backbone, run)
                else:
                    result, metrics = self._train_single(job_id, payload, backbone, run)
            except versions.JobNotLive as e:  # cancelled, or its task deleted, while it finished
                self._finish(job_id, CANCELLED, error=str(e))
                log.info("job %s cancelled before publishing: %s", job_id, e)
                return CANCELLED
            except Cancelled:
                if run.over_budget:
                    message = (
                        f"the job ran past its wall-time budget of {run.budget_s:g} s "
                        "(PROMPTHUB_JOB_MAX_SECONDS)"
                    )
                    log.warning("job %s failed: %s", job_id, message)
                    self._finish(job_id, FAILED, error=message)
                    return FAILED
                if self.stop_event.is_set() and not run.stop_requested.is_set():
                    with self.sessionmaker() as s:
                        db_jobs.release_job(s, job_id, worker_id=self.worker_id)
                    log.info("job %s put back in the queue: the worker is stopping", job_id)
                    return "released"
                self._finish(job_id, CANCELLED)
                log.info("job %s cancelled", job_id)
                return CANCELLED
            except Exception as e:
                message = (
                    str(e)
                    if isinstance(e, (DataError, ValueError, StoreError))
                    else f"{type(e).__name__}: {e}"
                )
                log.warning("job %s failed: %s", job_id, message, exc_info=not isinstance(e, DataError))
                self._finish(job_id, FAILED, error=message or type(e).__name__)
                return FAILED
            run.flush("done")
            self._finish(job_id, SUCCEEDED, result=result, metrics=_jsonable(metrics))
            log.info("job %s succeeded: %s", job_id, result)
            return SUCCEEDED

    def _lookup_dataset(self, dataset_id: str) -> tuple[Path, str, str] | None:
        """A referenced dataset, held to the upload limits (bytes here, rows when it is read):
        a reference does not bypass what an upload or a request body may hold."""
        with self.sessionmaker() as s:
            ds = db_datasets.get_dataset(s, dataset_id)
            if ds is None:
                return None
            location, filename, sha, recorded_size = ds.path, ds.filename, ds.sha256, ds.size_bytes
        limit = self.settings.max_upload_bytes
        if self.datasets.kind == "s3" and location.startswith("s3://"):
            if recorded_size > limit:  # checked before it is fetched
                raise DataError(
                    f"dataset {dataset_id!r} is {recorded_size} bytes; the limit is {limit} bytes "
                    "(PROMPTHUB_MAX_UPLOAD_BYTES)",
                    field="dataset_id",
                )
            try:  # this node's verified copy (fetched from the bucket once)
                path = self.datasets.local_copy(location, sha)
            except FileNotFoundError:
                path = Path(location)  # missing: load_split says so
            except StoreError as e:
                raise DataError(f"dataset {dataset_id!r}: {e}", field="dataset_id") from e
        else:
            path = Path(location)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # missing: load_split says so
        if size > limit:
            raise DataError(
                f"dataset {dataset_id!r} is {size} bytes; the limit is {limit} bytes (PROMPTHUB_MAX_UPLOAD_BYTES)",
                field="dataset_id",
            )
        return path, filename, sha

    def _check_labels(self, task_type: str, hp: dict, labels: Any, train: Any, ev: Any) -> None:
        """The cap on labels (and the label rules) for data the API did not see (a dataset)."""
        splits = {"train": train, **({"eval": ev} if ev else {})}
        validate_training(task_type, hp, labels, splits, max_labels=self.settings.max_labels)

    def _splits(
        self, spec_doc: dict[str, Any], task_type: str, where: str
    ) -> tuple[Any, Any, dict[str, Any]]:
        max_rows = self.settings.max_dataset_rows
        train, train_ref = load_split(
            spec_doc.get("train"), task_type, self._lookup_dataset, what=f"{where}train", max_rows=max_rows
        )
        if train is None:
            raise DataError(f"{where}train: training data is required")
        ev, ev_ref = load_split(
            spec_doc.get("eval"), task_type, self._lookup_dataset, what=f"{where}eval", max_rows=max_rows
        )
        data = {"train": _ref(train_ref), "eval": _ref(ev_ref)}
        return train, ev, data

    def _init_from(self, name: str | None, backbone: Backbone) -> ServingTask | None:
        if not name:
            return None
        with self.sessionmaker() as s:
            ver = db_tasks.get_active_version(s, name)
            if ver is None:
                raise ValueError(f"init_from: task {name!r} does not exist or has no active version")
            number, sha = ver.version, ver.sha256
        data = self.store.read_version(name, number, sha)
        task = load_checkpoint_bytes(data, backbone, where=f"init_from task {name!r} v{number}")
        if task.kv is None:
            raise ValueError(f"init_from: task {name!r} has no P-Tuning v2 prefix to start from")
        return task

    def _train_single(
        self, job_id: str, payload: dict[str, Any], backbone: Backbone, run: _JobRun
    ) -> tuple[dict[str, int], dict[str, Any]]:
        # the API validated the request (name, task type, hyperparameters, records) when it queued
        # it; a task made meanwhile with another task type makes publish() refuse the version
        name, task_type = payload["task"], payload["task_type"]
        hp = payload.get("hyperparameters") or {}
        train, ev, data = self._splits(payload, task_type, "")
        self._check_labels(task_type, hp, payload.get("labels"), train, ev)
        spec, config = build_training(task_type, hp, payload.get("labels"))
        init_kv = self._init_from(payload.get("init_from"), backbone)
        result = train_task(
            backbone,
            spec,
            train,
            ev,
            config,
            progress=run.progress,
            should_stop=run.should_stop,
            init_kv=init_kv,
            task_name=name,
        )
        extra = {"init_from": payload.get("init_from")} if payload.get("init_from") else {}
        version = self._publish(job_id, name, result, backbone, hp, config, data, **extra)
        return {name: version}, _jsonable(result.metrics)

    def _train_multitask(
        self, job_id: str, payload: dict[str, Any], backbone: Backbone, run: _JobRun
    ) -> tuple[dict[str, int], dict[str, Any]]:
        hp = payload.get("hyperparameters") or {}
        tasks: dict[str, tuple[Any, Any, Any]] = {}
        datas: dict[str, dict[str, Any]] = {}
        for i, t in enumerate(payload.get("tasks") or []):
            name = t["task"]
            train, ev, data = self._splits(t, t["task_type"], f"tasks[{i}].")
            self._check_labels(t["task_type"], hp, t.get("labels"), train, ev)
            spec, config = build_training(t["task_type"], hp, t.get("labels"))
            tasks[name] = (spec, train, ev)
            datas[name] = data
        results = train_multitask(
            backbone,
            tasks,
            config,
            progress=run.progress,
            should_stop=run.should_stop,
            per_task_epochs=int(payload.get("per_task_epochs") or 0),
        )
        published: dict[str, int] = {}
        for name, result in results.items():
            published[name] = self._publish(
                job_id, name, result, backbone, hp, config, datas[name], multitask=sorted(tasks)
            )
        return published, {name: _jsonable(r.metrics) for name, r in results.items()}

    def _publish(
        self,
        job_id: str,
        name: str,
        result: TrainResult,
        backbone: Backbone,
        hp: dict[str, Any],
        config: TrainConfig,
        data: dict[str, Any],
        **extra: Any,
    ) -> int:
        """Publish the trained task (store, then database, then activation); returns the version."""
        training = _jsonable(
            training_doc(
                hp,
                config,
                job_id=job_id,
                history=result.history,
                best_epoch=result.best_epoch,
                steps=getattr(result, "steps", None),
                seconds=getattr(result, "seconds", None),
                num_trainable=result.num_trainable,
                trainable_fraction=result.trainable_fraction,
                **extra,
            )
        )
        metrics = _jsonable(result.metrics)
        meta = {"training": training, "metrics": metrics, "source": f"job:{job_id}", "data": data}
        blob = checkpoint_bytes(result.task, backbone, meta=meta)
        with self.sessionmaker() as s:
            return versions.publish(s, self.store, name, blob, source=f"job:{job_id}", job_id=job_id).version


def _ref(ref: DataRef | None) -> dict[str, Any] | None:
    return ref.as_dict() if ref is not None else None


# ---------------------------------------------------------------------------- process entry points


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
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
