"""`prompthub worker` with PROMPTHUB_EXECUTOR=celery: a Celery worker, started programmatically, that
consumes its device class's queue one message at a time and runs each job with the same code as the
local worker (app.jobs.worker.Worker: heartbeat, progress, cancel, publish).

Pool: solo (the job runs in the worker process itself, concurrency 1). A `prompthub worker` process
is then exactly one process: SIGKILL (or the OOM killer) ends the job and the broker connection
together, so RabbitMQ puts the unacknowledged message back at once and another worker takes it. With
prefork the job would run in a child; billiard does not make that child die with its parent, so a
SIGKILLed parent would leave an orphan still training while the message went to another worker.

What a worker does with "run job X" is decided on the job row (app.db.job_queue.claim_job):
- queued: claim it (a guarded UPDATE: one worker wins) and run it;
- finished or missing (e.g. cancelled while queued): acknowledge and drop the message;
- running on a worker that died (its process is gone on this host, or the job's heartbeat is older
  than `job_stale_s`): count the death in `attempts`; at `max_worker_kills` the job fails with that
  reason, else this worker takes it over (app.db.job_queue.take_over_job);
- running on a live worker: a duplicate message is dropped; a re-delivered one (its first worker's
  connection closed) waits until that worker's heartbeat goes stale or the job ends.

A sweep thread (every `job_stale_s` / 2) does what no message may be there for: a running job whose
worker is gone is re-queued (or failed at `max_worker_kills`) and re-sent, a queued job never sent
(the API could not reach the broker) is sent, and rows of long-dead workers are deleted.

SIGTERM / SIGINT: the job stops between two training steps, goes back to the queue (the message is
rejected with requeue), and the worker exits.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from app.config import Settings
from app.db import job_queue
from app.db import workers as db_workers
from app.db.session import run_migrations
from app.jobs.celery_app import (
    RUN_JOB,
    celery_app,
    job_device_class,
    queue_name,
    send_run_job,
    worker_device_class,
)
from app.jobs.worker import Worker

log = logging.getLogger(__name__)

DISPATCH_GRACE_S = 5.0  # a queued job not marked sent this long after it was made is sent by a sweep
WAIT_POLL_S = 0.5
PRUNE_WORKERS_AFTER_S = 24 * 3600.0


class CeleryExecutor:
    """The job side of a Celery worker process: decides on the job row, runs jobs, sweeps."""

    def __init__(self, settings: Settings, stop_event: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop_event = stop_event or threading.Event()
        self.device_class = worker_device_class(settings)
        self.queue = queue_name(settings, self.device_class)
        self.worker = Worker(settings, stop_event=self.stop_event)
        self.worker_id = self.worker.worker_id
        self.sessionmaker = self.worker.sessionmaker
        self._sweeper: threading.Thread | None = None
        self._sweep_stop = threading.Event()

    # ------------------------------------------------------------------ one message
    def handle(self, job_id: str, redelivered: bool) -> str:
        """Act on "run job X"; returns what happened (for logs and tests). Raises StopRequested when
        the worker is stopping and the message must go back to the queue."""
        deadline: float | None = None
        while True:
            if self.stop_event.is_set():
                raise StopRequested(job_id)
            with self.sessionmaker() as s:
                outcome, job = job_queue.claim_job(
                    s, job_id, self.worker_id, max_running=self.settings.max_running_jobs
                )
                snapshot = (
                    (job.kind, dict(job.payload or {}), job.worker_id, job.heartbeat_at, job.state)
                    if job is not None
                    else None
                )
            if outcome == job_queue.GONE:
                log.info("job %s: %s; message dropped", job_id, snapshot[4] if snapshot else "no such job")
                return "dropped"
            if outcome == job_queue.CLAIMED:
                assert snapshot is not None
                return self._run(job_id, snapshot[0], snapshot[1])
            if outcome == job_queue.BUSY:  # max_running_jobs over the fleet: keep the message, wait
                self.stop_event.wait(WAIT_POLL_S)
                continue
            assert snapshot is not None
            owner = snapshot[2]
            if owner == self.worker_id:
                return "dropped"
            if self._owner_dead(owner, snapshot[3]):
                with self.sessionmaker() as s:
                    taken = job_queue.take_over_job(
                        s,
                        job_id,
                        dead_worker_id=owner,
                        worker_id=self.worker_id,
                        max_kills=self.settings.max_worker_kills,
                    )
                if taken == job_queue.CLAIMED:
                    log.warning("job %s: its worker %s died; taking it over", job_id, owner)
                    return self._run(job_id, snapshot[0], snapshot[1])
                if taken != job_queue.GONE:
                    log.warning("job %s: its worker %s died; the job is now %s", job_id, owner, taken)
                    return taken
                continue  # the row changed meanwhile: look again
            if not redelivered:
                log.info("job %s runs on live worker %s: duplicate message dropped", job_id, owner)
                return "dropped"
            # re-delivered while its worker still looks alive (e.g. its connection dropped): wait for
            # its heartbeat to go stale or the job to end; if it lives on, the sweep watches it
            if deadline is None:
                deadline = time.monotonic() + self.settings.job_stale_s + 2 * self.settings.job_heartbeat_s
            if time.monotonic() > deadline:
                log.info("job %s still runs on live worker %s: re-delivered message dropped", job_id, owner)
                return "dropped"
            self.stop_event.wait(WAIT_POLL_S)

    def _owner_dead(self, owner: str | None, heartbeat_at: Any) -> bool:
        if job_queue.worker_process_gone(owner):
            return True
        if heartbeat_at is None:
            return False
        from app.db.models import utcnow

        return (utcnow() - heartbeat_at).total_seconds() > self.settings.job_stale_s

    def _run(self, job_id: str, kind: str, payload: dict[str, Any]) -> str:
        backbone = self.worker.backbone
        presence = self.worker.presence
        log.info("worker %s: job %s (%s) started", self.worker_id, job_id, kind)
        if presence is not None:
            presence.set_job(job_id)
        try:
            state = self.worker._run_job(job_id, kind, payload, backbone)
        finally:
            if presence is not None:
                presence.set_job(None)
        if state == "released":
            with self.sessionmaker() as s:
                job_queue.mark_dispatched(s, job_id)  # its message goes back to the queue
            raise StopRequested(job_id)
        return state

    # ------------------------------------------------------------------ sweep
    def sweep(self) -> dict[str, list[str]]:
        """Recover jobs of dead workers, send jobs never sent, prune long-dead workers' rows."""
        s_ = self.settings
        with self.sessionmaker() as s:
            recovered = job_queue.recover_stale_jobs(
                s,
                stale_after_s=s_.job_stale_s,
                on_crash="requeue",
                max_attempts=s_.max_worker_kills,
                fail_reason=lambda n, w: job_queue.kill_reason(n, s_.max_worker_kills, w),
            )
            db_workers.prune_workers(s, max(PRUNE_WORKERS_AFTER_S, 10 * s_.job_stale_s))
            to_send = job_queue.claim_undispatched(s, DISPATCH_GRACE_S)
        for job_id in recovered:
            log.warning("job %s: its worker died; re-queued or failed (sweep)", job_id)
        sent: list[str] = []
        for job_id, payload in to_send:
            try:
                send_run_job(s_, job_id, job_device_class(payload))
                sent.append(job_id)
                log.info("job %s: sent to the broker (sweep)", job_id)
            except Exception as e:
                log.warning("job %s: sending failed (%s); next sweep tries again", job_id, e)
                with self.sessionmaker() as s:
                    job_queue.undispatch(s, job_id)
        return {"recovered": recovered, "sent": sent}

    def _sweep_loop(self) -> None:
        every = max(1.0, self.settings.job_stale_s / 2)
        while not self._sweep_stop.is_set():
            try:
                self.sweep()
            except Exception:
                log.warning("sweep failed", exc_info=True)
            self._sweep_stop.wait(every)

    def start_background(self) -> None:
        """The worker's row in the workers table and the sweep thread (once the consumer is ready)."""
        if self.worker.presence is None:
            self.worker.start_presence("celery", self.device_class, self.queue)
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="celery-sweep", daemon=True)
            self._sweeper.start()

    def stop_background(self) -> None:
        self._sweep_stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        if self.worker.presence is not None:
            self.worker.presence.stop()


class StopRequested(Exception):
    """The worker is stopping: the job (if it ran) is back in the queue; the message must be too."""


def register_task(app: Any, executor: CeleryExecutor) -> Any:
    from celery.exceptions import Reject

    @app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job(self: Any, job_id: Any) -> str:
        if not isinstance(job_id, str) or not 0 < len(job_id) <= 64:
            log.warning("message with a malformed job id %r dropped", job_id)
            return "dropped"
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        try:
            return executor.handle(job_id, redelivered)
        except StopRequested:
            raise Reject("the worker is stopping", requeue=True) from None
        except Exception:  # e.g. the database is down: the message goes back, after a pause
            log.exception("job %s: could not be handled; message re-queued", job_id)
            time.sleep(2.0)
            raise Reject("could not be handled", requeue=True) from None

    return run_job


def celery_worker_command(settings: Settings) -> int:
    """Load the backbone, then consume `<prefix>-<device class>` with one solo-pool worker."""
    from celery import signals

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_migrations(settings.database_url)
    executor = CeleryExecutor(settings)
    _ = executor.worker.backbone  # loaded before consuming: a broken backbone must not eat messages
    app = celery_app(settings)
    register_task(app, executor)

    def on_ready(**_: Any) -> None:
        executor.start_background()
        log.info(
            "celery worker %s ready: queue %s, device %s",
            executor.worker_id,
            executor.queue,
            settings.device_list[0],
        )

    def on_shutting_down(**_: Any) -> None:
        executor.stop_event.set()  # the running job stops at its next step and goes back to the queue

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    pid_part = executor.worker_id.split(":")[1]
    worker = app.Worker(
        hostname=f"prompthub-{executor.device_class}-{pid_part}@{socket.gethostname()}",
        pool="solo",
        concurrency=1,
        queues=[executor.queue],
        loglevel=settings.log_level.upper(),
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        optimization="fair",
    )
    try:
        worker.start()
    finally:
        executor.stop_background()
    return int(worker.exitcode or 0)
