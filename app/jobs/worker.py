"""The training worker: a process of its own that takes queued jobs from the database, trains them
on the shared frozen backbone, writes the new version to the prompt store (file first, then the
database row) and activates it, so the server serves it at once.

Liveness: a background thread refreshes the job's heartbeat; a worker that dies leaves a job whose
heartbeat goes stale (or whose process is gone), and `recover_stale_jobs`, run by every worker at
start and then periodically, re-queues or fails it. SIGTERM/SIGINT stop between two training steps
and put the current job back in the queue.

Beside it: app.jobs.progress (the job's heartbeat, stop flag and progress), app.jobs.publish
(promotion and publishing) and app.jobs.process (`prompthub worker` and the embedded worker).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from app import versions
from app.config import Settings
from app.db import datasets as db_datasets
from app.db import job_queue
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.db.models import CANCELLED, FAILED, SUCCEEDED
from app.db.session import get_sessionmaker
from app.engine.backbone import Backbone, load_backbone
from app.engine.checkpoint import load_checkpoint_bytes
from app.engine.data import DataError
from app.engine.model import ServingTask, TaskSpec
from app.engine.multitask import train_multitask
from app.engine.options import build_training, validate_training
from app.engine.resume import RunCheckpointer
from app.engine.search import run_search
from app.engine.search_state import SearchState
from app.engine.train import train_task
from app.engine.train_config import Cancelled, TrainConfig, infer_labels, split_holdout
from app.jobs.payload import DataRef, load_split
from app.jobs.presence import WorkerPresence
from app.jobs.progress import JobRun, jsonable
from app.jobs.publish import promote_and_publish
from app.store import StoreError, open_datasets, open_store

log = logging.getLogger(__name__)


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
        self.worker_id = worker_id or job_queue.make_worker_id()
        self.sessionmaker = get_sessionmaker(settings.database_url)
        self.store = open_store(settings)  # the local folder or S3 (PROMPTHUB_STORE_URL)
        self.datasets = open_datasets(settings, self.store)
        self.stop_event = stop_event or threading.Event()
        self._backbone = backbone
        self._last_recovery: float | None = None
        self._released: str | None = None  # the last job put back in the queue by a stopping worker
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
            ids = job_queue.recover_stale_jobs(
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
            job = job_queue.claim_next_job(s, self.worker_id, max_running=self.settings.max_running_jobs)
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

    def _state_checkpointer(self, job_id: str) -> RunCheckpointer | None:
        """Where a single-task job saves its training state (None: PROMPTHUB_CHECKPOINT_EVERY_S=0)."""
        every = self.settings.checkpoint_every_s
        if every <= 0:
            return None
        root = self.settings.train_state_dir or Path(self.settings.data_dir).parent / "train-state"
        return RunCheckpointer(Path(root) / f"{job_id}.state", every_s=every)

    def _search_state(self, job_id: str) -> SearchState | None:
        """Where a search job saves its state: finished trials, the trial in flight and its training
        state (None: PROMPTHUB_CHECKPOINT_EVERY_S=0)."""
        ck = self._state_checkpointer(job_id)
        return None if ck is None else SearchState(ck.path.with_suffix(".search"), every_s=ck.every_s)

    def _run_job(self, job_id: str, kind: str, payload: dict[str, Any], backbone: Backbone) -> str:
        """Train, publish and finish the job; returns its final state, or "released" when the worker
        is stopping and put it back in the queue."""
        try:
            return self._run_job_once(job_id, kind, payload, backbone)
        finally:
            # the saved state outlives only a job that goes back to the queue (a stopping worker)
            # or whose worker dies (then this line never runs)
            ck, search = self._state_checkpointer(job_id), self._search_state(job_id)
            if ck is not None and not (self.stop_event.is_set() and self._released == job_id):
                ck.clear()
                search.clear()

    def _run_job_once(self, job_id: str, kind: str, payload: dict[str, Any], backbone: Backbone) -> str:
        with JobRun(self, job_id) as run:
            try:
                if kind == "multitask":
                    result, metrics, promotion = self._train_multitask(job_id, payload, backbone, run)
                else:
                    result, metrics, promotion = self._train_single(job_id, payload, backbone, run)
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
                        job_queue.release_job(s, job_id, worker_id=self.worker_id)
                    self._released = job_id
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
            self._finish(
                job_id, SUCCEEDED, result=result, metrics=jsonable(metrics), promotion=jsonable(promotion)
            )
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

    def _serving_precision(self, built: tuple[TaskSpec, TrainConfig]) -> tuple[TaskSpec, TrainConfig]:
        """A run trains for the precision the servers run (PROMPTHUB_PRECISION) unless it names one:
        an int8 fleet gets int8 versions, which it serves, rather than fp32 ones it refuses."""
        spec, config = built
        precision = config.precision or ("int8" if self.settings.precision == "int8" else "fp32")
        return spec, replace(
            config, precision=precision, int8_keep_ffn_out_fp32=self.settings.int8_keep_ffn_out_fp32
        )

    def _train_single(
        self, job_id: str, payload: dict[str, Any], backbone: Backbone, run: JobRun
    ) -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
        # the API validated the request (name, task type, hyperparameters, records) when it queued
        # it; a task made meanwhile with another task type makes publish() refuse the version
        name, task_type = payload["task"], payload["task_type"]
        hp = payload.get("hyperparameters") or {}
        train, ev, data = self._splits(payload, task_type, "")
        self._check_labels(task_type, hp, payload.get("labels"), train, ev)
        spec, config = self._serving_precision(build_training(task_type, hp, payload.get("labels")))
        mode = payload.get("activate") or "always"
        if mode == "if_better":  # the eval split train_task would make, made here to compare on it
            infer_labels(spec, train)
            train, ev = split_holdout(train, ev, config.holdout_fraction, config.seed)
        init_kv = self._init_from(payload.get("init_from"), backbone)
        search = payload.get("search")
        if search:  # the best of a built-in search (app.engine.search), with its log
            found = run_search(
                backbone,
                spec,
                train,
                ev,
                config,
                trials=int(search["trials"]),
                metric=search.get("metric"),
                timeout_s=search.get("timeout_s"),
                progress=run.progress,
                should_stop=run.should_stop,
                task_name=name,
                state=self._search_state(job_id),
            )
            version, promoted = promote_and_publish(
                self.sessionmaker,
                self.store,
                job_id,
                name,
                mode,
                found.best,
                ev,
                backbone,
                hp,
                config,
                data,
                search=found.log,
            )
            return {name: version}, jsonable(found.best.metrics), {name: promoted}
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
            checkpointer=self._state_checkpointer(job_id),
        )
        extra = {"init_from": payload.get("init_from")} if payload.get("init_from") else {}
        if run.resumed_from is not None:
            extra["resumed_from_step"] = run.resumed_from
        version, promoted = promote_and_publish(
            self.sessionmaker, self.store, job_id, name, mode, result, ev, backbone, hp, config, data, **extra
        )
        return {name: version}, jsonable(result.metrics), {name: promoted}

    def _train_multitask(
        self, job_id: str, payload: dict[str, Any], backbone: Backbone, run: JobRun
    ) -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
        hp = payload.get("hyperparameters") or {}
        mode = payload.get("activate") or "always"
        tasks: dict[str, tuple[Any, Any, Any]] = {}
        configs: dict[str, TrainConfig] = {}
        datas: dict[str, dict[str, Any]] = {}
        for i, t in enumerate(payload.get("tasks") or []):
            name = t["task"]
            train, ev, data = self._splits(t, t["task_type"], f"tasks[{i}].")
            self._check_labels(t["task_type"], hp, t.get("labels"), train, ev)
            spec, config = self._serving_precision(build_training(t["task_type"], hp, t.get("labels")))
            if mode == "if_better":  # the eval split train_multitask would make, made here
                infer_labels(spec, train)
                train, ev = split_holdout(train, ev, config.holdout_fraction, config.seed)
            tasks[name] = (spec, train, ev)
            configs[name] = config
            datas[name] = data
        # the joint stage trains at the first task's settings (its prefix's layers and form are the
        # first task's too), each task at its own batch size; the per-task stage at each task's own
        joint = next(iter(configs.values()))
        results = train_multitask(
            backbone,
            tasks,
            joint,
            progress=run.progress,
            should_stop=run.should_stop,
            per_task_epochs=int(payload.get("per_task_epochs") or 0),
            checkpointer=self._state_checkpointer(job_id),
            task_configs=configs,
        )
        published: dict[str, int] = {}
        promotion: dict[str, Any] = {}
        for name, result in results.items():
            published[name], promotion[name] = promote_and_publish(
                self.sessionmaker,
                self.store,
                job_id,
                name,
                mode,
                result,
                tasks[name][2],
                backbone,
                hp,
                configs[name],
                datas[name],
                multitask=sorted(tasks),
            )
        return published, {name: jsonable(r.metrics) for name, r in results.items()}, promotion


def _ref(ref: DataRef | None) -> dict[str, Any] | None:
    return ref.as_dict() if ref is not None else None
