"""GET /workers (train scope, jobs of other tasks hidden from a task-limited key), the local worker's
row, and POST /train under PROMPTHUB_EXECUTOR=celery: the job row is committed and queued whether
or not the broker answers (a worker's sweep sends what the API could not), and the app starts no
embedded worker."""

from __future__ import annotations

import threading

import pytest
from starlette.testclient import TestClient

from app.db import job_queue, keys
from app.db import jobs as db_jobs
from app.db import workers as db_workers
from tests.helpers import free_port, local_client, session_for, wait_for

RECORDS = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _train(task: str, **extra):
    return {"task": task, "task_type": "classification", "train": {"records": RECORDS}, **extra}


def test_workers_need_the_train_scope_and_hide_other_tasks_jobs(settings_factory, hub_factory):
    from app.main import create_app

    settings = settings_factory(auth="required", auth_cache_s=0.0, job_stale_s=30.0)
    hub = hub_factory(settings)
    with TestClient(create_app(settings, hub)) as c:
        with session_for(settings) as s:
            tokens = {
                "predict": keys.create_key(s, name="p", scopes=["predict"])[1],
                "train": keys.create_key(s, name="t", scopes=["train"])[1],
                "other": keys.create_key(s, name="o", scopes=["train"], tasks=["other*"])[1],
            }
            job = db_jobs.create_job(s, kind="single", payload={}, task_names=["secret"], max_queued=10)
            job_queue.claim_job(s, job.id, "h:1:a")
            db_workers.register_worker(
                s,
                id="h:1:a",
                host="h",
                pid=1,
                executor="celery",
                device_class="gpu",
                device="cuda:0",
                queue="q-gpu",
            )
            db_workers.worker_heartbeat(s, "h:1:a", job.id)
        assert c.get("/workers").status_code == 401
        r = c.get("/workers", headers=bearer(tokens["predict"]))
        assert r.status_code == 403 and "'train' scope" in r.json()["detail"]
        [w] = c.get("/workers", headers=bearer(tokens["train"])).json()
        assert (w["id"], w["executor"], w["device_class"], w["device"], w["queue"], w["alive"]) == (
            "h:1:a",
            "celery",
            "gpu",
            "cuda:0",
            "q-gpu",
            True,
        )
        assert (w["job_id"], w["job_tasks"]) == (job.id, ["secret"])
        [w] = c.get("/workers", headers=bearer(tokens["other"])).json()
        assert w["job_id"] is None and w["job_tasks"] is None  # a job of a task the key may not see
        r = c.get("/workers?include_stale=maybe", headers=bearer(tokens["train"]))
        assert r.status_code == 422 and "include_stale" in r.text


def test_stale_workers_are_dropped_or_marked(client, settings):
    from datetime import timedelta

    from sqlalchemy import update

    from app.db.models import WorkerRow, utcnow

    with session_for(settings) as s:
        for i in (1, 2):
            db_workers.register_worker(
                s, id=f"h:{i}:x", host="h", pid=i, executor="local", device_class="cpu", device="cpu"
            )
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == "h:2:x")
            .values(heartbeat_at=utcnow() - timedelta(seconds=settings.job_stale_s + 5))
        )
        s.commit()
    assert [w["id"] for w in client.get("/workers").json()] == ["h:1:x"]
    every = client.get("/workers", params={"include_stale": "true"}).json()
    assert [(w["id"], w["alive"]) for w in every] == [("h:1:x", True), ("h:2:x", False)]


def test_the_local_worker_heartbeats_its_row(client, settings, hub):
    from app.jobs.worker import Worker

    fast = settings.model_copy(update={"job_heartbeat_s": 0.1, "worker_poll_s": 0.05})
    stop = threading.Event()
    worker = Worker(fast, backbone=hub.backbone, stop_event=stop)
    t = threading.Thread(target=worker.run_forever, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(client.get("/workers").json()) == 1, 30, "the worker's row")
        [w] = client.get("/workers").json()
        assert (w["id"], w["executor"], w["device_class"], w["queue"], w["job_id"]) == (
            worker.worker_id,
            "local",
            "cpu",
            None,
            None,
        )
        first = w["heartbeat_at"]
        wait_for(lambda: client.get("/workers").json()[0]["heartbeat_at"] != first, 10, "a heartbeat")
    finally:
        stop.set()
        t.join(30)
    assert client.get("/workers", params={"include_stale": True}).json() == []  # a clean stop removes it


def test_celery_train_is_queued_even_when_the_broker_is_down(settings_factory, hub_factory):
    from app.main import create_app

    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"  # nothing listens there
    settings = settings_factory(executor="celery", broker_url=down, embedded_worker=True)
    app = create_app(settings, hub_factory(settings))
    with local_client(app) as c:
        assert app.state.worker is None  # executor=celery: no embedded worker
        assert c.get("/readyz").json()["training"] == "external"
        r = c.post("/train", json=_train("sentiment", device_class="gpu"))
        assert r.status_code == 202, r.text
        with session_for(settings) as s:
            job = db_jobs.get_job(s, r.json()["job_id"])
        assert job.state == "queued" and job.dispatched_at is None  # a worker's sweep sends it
        assert job.payload["device_class"] == "gpu"
        r = c.post("/train", json=_train("sentiment", device_class="tpu"))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "device_class"], r.text


@pytest.mark.rabbitmq
def test_celery_train_sends_run_job_to_the_device_class_queue(settings_factory, hub_factory):
    import uuid

    from kombu import Connection

    from app.main import create_app

    broker = "amqp://guest:guest@127.0.0.1:5672//"
    try:
        with Connection(broker, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as e:
        pytest.skip(f"RabbitMQ is not reachable at {broker}: {e}")
    prefix = f"prompthub-test-{uuid.uuid4().hex[:10]}"
    settings = settings_factory(executor="celery", broker_url=broker, celery_queue_prefix=prefix)
    try:
        with local_client(create_app(settings, hub_factory(settings))) as c:
            ids = [c.post("/train", json=_train("a")).json()["job_id"]]
            ids.append(c.post("/train", json=_train("b", device_class="gpu")).json()["job_id"])
        with session_for(settings) as s:
            assert all(db_jobs.get_job(s, i).dispatched_at is not None for i in ids)
        with Connection(broker) as conn:
            ch = conn.channel()
            for cls, job_id in zip(("cpu", "gpu"), ids, strict=True):
                assert ch.queue_declare(queue=f"{prefix}-{cls}", passive=True).message_count == 1
                msg = ch.basic_get(f"{prefix}-{cls}", no_ack=True)
                assert msg.headers["task"] == "prompthub.run_job"
                assert job_id in str(msg.body)
            ch.close()
    finally:
        with Connection(broker) as conn:
            ch = conn.channel()
            for cls in ("cpu", "gpu"):
                try:
                    ch.queue_delete(f"{prefix}-{cls}")
                    ch.exchange_delete(f"{prefix}-{cls}")
                except Exception:
                    pass
            ch.close()


def test_celery_train_sends_through_redis_too(settings_factory, hub_factory):
    import base64
    import json
    import uuid

    import redis

    from app.main import create_app

    url = "redis://127.0.0.1:6379/0"
    r = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        r.ping()
    except Exception as e:
        pytest.skip(f"Redis is not reachable at {url}: {e}")
    prefix = f"prompthub-test-{uuid.uuid4().hex[:10]}"
    settings = settings_factory(executor="celery", broker_url=url, celery_queue_prefix=prefix)
    try:
        with local_client(create_app(settings, hub_factory(settings))) as c:
            job_id = c.post("/train", json=_train("a")).json()["job_id"]
        with session_for(settings) as s:
            assert db_jobs.get_job(s, job_id).dispatched_at is not None
        [raw] = r.lrange(f"{prefix}-cpu", 0, -1)  # kombu's Redis transport: one list per queue
        message = json.loads(raw)
        assert message["headers"]["task"] == "prompthub.run_job"
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        assert json.loads(body)[0] == [job_id]  # (args, kwargs, embed): args = [job_id]
    finally:
        r.delete(f"{prefix}-cpu", f"{prefix}-gpu")
        for key in r.scan_iter(f"_kombu.binding.{prefix}-*"):
            r.delete(key)
