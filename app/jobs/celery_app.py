"""The Celery side of the celery executor (PROMPTHUB_EXECUTOR=celery): the Celery app, its queues,
and sending "run job X".

The job row in the database is the only truth about a job (state, progress, metrics, attempts); a
message carries nothing but the job's id, and is sent after the row is committed. Queues are one per
device class, `<celery_queue_prefix>-cpu` and `-gpu` (durable, persistent messages, publisher
confirms on RabbitMQ). Workers acknowledge a message only after the job ended (acks_late), take one
message at a time (prefetch 1), and a message whose worker process died goes back to the queue
(RabbitMQ: at once, when the dead worker's connection closes; Redis: after the visibility timeout,
or sooner through the database sweep in app.jobs.celery_worker).

This module is light to import: the API server uses it to send messages, and only the worker
(app.jobs.celery_worker) registers the task itself.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from app.config import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

RUN_JOB = "prompthub.run_job"  # the one task: args [job_id]
DEVICE_CLASSES = ("cpu", "gpu")
SEND_TIMEOUT_S = 5.0  # how long POST /train may wait for the broker before leaving it to the sweep

_apps: dict[tuple[str, str, float], Celery] = {}
_lock = threading.Lock()


def queue_name(settings: Settings, device_class: str) -> str:
    if device_class not in DEVICE_CLASSES:
        raise ValueError(f"device class {device_class!r}: expected one of {', '.join(DEVICE_CLASSES)}")
    return f"{settings.celery_queue_prefix}-{device_class}"


def job_device_class(payload: dict[str, Any] | None) -> str:
    """The device class a job asked for (POST /train `device_class`), cpu when it did not."""
    value = (payload or {}).get("device_class") or "cpu"
    return value if value in DEVICE_CLASSES else "cpu"


def worker_device_class(settings: Settings) -> str:
    """PROMPTHUB_DEVICE_CLASS, else gpu when the worker's device is cuda, else cpu."""
    if settings.device_class:
        return settings.device_class
    return "gpu" if settings.device_list[0].lower().startswith("cuda") else "cpu"


def _configure(app: Celery, settings: Settings) -> None:
    from kombu import Exchange, Queue

    names = [queue_name(settings, c) for c in DEVICE_CLASSES]
    redis = settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://"))
    transport: dict[str, Any] = {}
    if redis:
        # an unacknowledged message is handed out again after this long: longer than any job may
        # run, so a live job is not handed to a second worker (a dead worker's job is re-sent by the
        # database sweep long before)
        transport["visibility_timeout"] = int(settings.job_max_seconds + 3600)
    else:
        transport["confirm_publish"] = True  # a send returns once RabbitMQ has the message
    app.conf.update(
        task_queues=[Queue(n, Exchange(n, type="direct"), routing_key=n, durable=True) for n in names],
        task_default_queue=names[0],
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job row holds the result
        task_acks_late=True,  # ack after the job ended: a worker killed mid-job leaves it unacked
        task_reject_on_worker_lost=True,  # a prefork child killed mid-job: requeue, not ack
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,  # one message at a time: the next stays for another worker
        worker_concurrency=1,  # one job per device
        worker_enable_remote_control=False,  # /workers (a database table) replaces `celery inspect`
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        # the solo pool runs the job in the consumer's thread, which cannot answer AMQP heartbeats
        # during a job; RabbitMQ would drop the connection and re-deliver a live job. Without
        # heartbeats a dead worker is still seen at once: its socket closes when the process dies.
        broker_heartbeat=0,
        broker_connection_timeout=SEND_TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
    )


def celery_app(settings: Settings) -> Celery:
    """One Celery app per (broker, queue prefix, job budget) in this process."""
    key = (settings.broker_url, settings.celery_queue_prefix, float(settings.job_max_seconds))
    with _lock:
        app = _apps.get(key)
        if app is None:
            from celery import Celery

            app = Celery("prompthub", broker=settings.broker_url, set_as_current=False)
            _configure(app, settings)
            _apps[key] = app
        return app


def send_run_job(settings: Settings, job_id: str, device_class: str) -> None:
    """Send "run job X" to the device class's queue; raises when the broker cannot be reached or
    refuses the message."""
    app = celery_app(settings)
    app.send_task(
        RUN_JOB,
        args=[job_id],
        queue=queue_name(settings, device_class),
        retry=True,
        retry_policy={
            "max_retries": 1,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
    )


def try_send_run_job(settings: Settings, job_id: str, device_class: str) -> bool:
    """send_run_job, logging instead of raising: the job row is committed and queued either way, and
    a worker's sweep sends it later (app.jobs.celery_worker)."""
    try:
        send_run_job(settings, job_id, device_class)
        return True
    except Exception as e:
        log.warning(
            "job %s: could not send it to the broker (%s: %s); a worker's sweep sends it later",
            job_id,
            type(e).__name__,
            e,
        )
        return False
