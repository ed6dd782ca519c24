"""The celery executor with the real RabbitMQ (127.0.0.1:5672) and PostgreSQL: the API (the app of
`prompthub serve`, PROMPTHUB_EXECUTOR=celery, in this process on a loopback test client) and Celery
worker processes (`prompthub worker`) on a tiny random backbone. The queues get a prefix of their own per test session (so parallel
runs on the same broker never take each other's messages) and are deleted at the end.

Training through the API, a worker SIGKILLed mid-training (another one finishes the job), cancel of a
queued and of a running job, a job that kills its worker max_worker_kills times (failed, with that
reason), /workers, and a GPU-queue job that no cpu worker takes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.db.session import REPO_ROOT, dispose_engines, run_migrations
from tests.helpers import local_client, process_env, wait_for

# the first test's time includes starting the API and four worker processes (each imports torch)
pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(1200)]

BROKER = os.environ.get("PROMPTHUB_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
PG = "postgresql://postgres@127.0.0.1:5432"

RECORDS = [
    {"text": f"{w} film number {i}", "label": lab}
    for i in range(400)
    for w, lab in (("great", "pos"), ("awful", "neg"))
]  # 200 steps an epoch at batch size 4: max_steps decides how long a job trains


def _body(task: str, max_steps: int, **extra: Any) -> dict[str, Any]:
    # no early stopping: a job runs its max_steps (each at least fault_step_delay_s), so the kill and
    # cancel tests find it still training
    hp = {
        "epochs": 100,
        "max_steps": max_steps,
        "batch_size": 4,
        "max_length": 16,
        "prefix_length": 4,
        "early_stopping_patience": 0,
    }
    return {
        "task": task,
        "task_type": "classification",
        "train": {"records": RECORDS},
        "hyperparameters": hp,
        **extra,
    }


def _broker_or_skip() -> None:
    from kombu import Connection

    try:
        with Connection(BROKER, connect_timeout=3) as c:
            c.ensure_connection(max_retries=1, timeout=3)
    except Exception as e:
        pytest.skip(f"RabbitMQ is not reachable at {BROKER}: {e}")


def _queue_depth(name: str) -> int:
    from kombu import Connection

    with Connection(BROKER) as c:
        ch = c.channel()
        try:
            return int(ch.queue_declare(queue=name, passive=True).message_count)
        finally:
            ch.close()


def _drop_queues(names: list[str]) -> None:
    from kombu import Connection

    with Connection(BROKER) as c:
        for name in names:
            ch = c.channel()
            try:
                ch.queue_purge(name)
                ch.queue_delete(name)
                ch.exchange_delete(name)
            except Exception:  # never declared (no test sent to it)
                pass
            finally:
                try:
                    ch.close()
                except Exception:
                    pass


class Fleet:
    def __init__(self, settings: Settings, tmp: Path, client: Any) -> None:
        self.settings = settings
        self.tmp = tmp
        self.workers: list[subprocess.Popen] = []
        self.c = client
        self.cpu: list[subprocess.Popen] = []
        self.gpu: subprocess.Popen | None = None

    def start_worker(self, **overrides: Any) -> subprocess.Popen:
        settings = self.settings.model_copy(update=overrides)
        log = self.tmp / f"worker-{len(self.workers)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env={**process_env(settings), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                cwd=str(REPO_ROOT),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc.log = log  # type: ignore[attr-defined]
        self.workers.append(proc)
        return proc

    def wait_listed(self, proc: subprocess.Popen, timeout: float = 300) -> dict[str, Any]:
        """Until /workers lists the process (it registers once its Celery consumer is ready)."""
        found: dict[str, Any] = {}

        def listed() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"worker exited ({proc.returncode}):\n{proc.log.read_text()[-4000:]}")  # type: ignore[attr-defined]
            for w in self.c.get("/workers").json():
                if w["pid"] == proc.pid:
                    found.update(w)
                    return True
            return False

        wait_for(listed, timeout, f"worker {proc.pid} in /workers", every=0.2)
        return found

    def job(self, job_id: str) -> dict[str, Any]:
        return self.c.get(f"/jobs/{job_id}").json()

    def wait_state(self, job_id: str, state: str, timeout: float = 300) -> dict[str, Any]:
        wait_for(lambda: self.job(job_id)["state"] == state, timeout, f"job {job_id[:8]} {state}", every=0.1)
        return self.job(job_id)

    def wait_training(self, job_id: str, attempts: int = 0, timeout: float = 300) -> int:
        """Until the job trains (a few steps done) on some worker, in attempt `attempts`; its pid."""

        def training() -> bool:
            j = self.job(job_id)
            assert j["state"] in ("queued", "running"), j
            return (
                j["state"] == "running"
                and j["attempts"] == attempts
                and (j["progress"] or {}).get("step", 0) >= 3
            )

        wait_for(training, timeout, f"job {job_id[:8]} to train (attempt {attempts})", every=0.05)
        return self.owner_pid(job_id)

    def owner_pid(self, job_id: str) -> int:
        from app.db import jobs as db_jobs
        from app.db.session import get_sessionmaker

        with get_sessionmaker(self.settings.database_url)() as s:
            return int(db_jobs.get_job(s, job_id).worker_id.split(":")[1])

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        for p in self.workers:
            if p.pid == pid:
                p.wait(30)

    def close(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.terminate()
        for p in self.workers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_backbone_dir) -> Iterator[Fleet]:
    from app.engine.backbone import load_backbone
    from app.main import create_app, make_hub

    _broker_or_skip()
    try:
        import psycopg

        admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=3)
    except Exception as e:
        pytest.skip(f"PostgreSQL is not reachable at {PG}: {e}")
    db = f"prompthub_celery_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    prefix = f"prompthub-test-{uuid.uuid4().hex[:10]}"
    tmp = tmp_path_factory.mktemp("celery-fleet")
    settings = Settings(
        database_url=f"{PG}/{db}",
        store_dir=str(tmp / "store"),
        data_dir=str(tmp / "data"),
        backbone=str(tiny_backbone_dir),
        executor="celery",
        broker_url=BROKER,
        celery_queue_prefix=prefix,
        embedded_worker=False,
        job_heartbeat_s=0.2,
        job_stale_s=4.0,
        max_worker_kills=2,
        max_wait_ms=2.0,
        # 20 ms a training step: a job is still training when a test kills its worker, however fast
        # the machine
        fault_step_delay_s=0.02,
    )
    run_migrations(settings.database_url)
    fleet = None
    try:
        # the app `prompthub serve` runs (embedded_worker stays on: executor=celery must not start it)
        hub = make_hub(settings, backbones=[load_backbone(str(tiny_backbone_dir))])
        app = create_app(settings.model_copy(update={"embedded_worker": True}), hub)
        with local_client(app) as client:
            fleet = Fleet(settings, tmp, client)
            assert app.state.worker is None
            # every worker the tests need, started at once (a start is mostly importing torch)
            fleet.cpu = [fleet.start_worker() for _ in range(3)]
            fleet.gpu = fleet.start_worker(device_class="gpu")  # a gpu-class worker (its device is the CPU)
            yield fleet
    finally:
        if fleet is not None:
            fleet.close()
        _drop_queues([f"{prefix}-cpu", f"{prefix}-gpu"])
        dispose_engines()
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _live_cpu(fleet: Fleet) -> list[subprocess.Popen]:
    return [p for p in fleet.workers if p.poll() is None and p is not fleet.gpu]


def test_train_through_celery_and_list_workers(fleet):
    assert fleet.c.get("/readyz").json()["training"] == "external"  # serve runs no embedded worker
    prefix = fleet.settings.celery_queue_prefix
    for proc in fleet.cpu:
        w = fleet.wait_listed(proc)
        assert (w["executor"], w["device_class"], w["queue"], w["alive"]) == (
            "celery",
            "cpu",
            f"{prefix}-cpu",
            True,
        )
        assert w["job_id"] is None
    w = fleet.wait_listed(fleet.gpu)
    assert (w["device_class"], w["queue"]) == ("gpu", f"{prefix}-gpu")

    r = fleet.c.post("/train", json=_body("sentiment", max_steps=150))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    pid = fleet.wait_training(job_id)
    assert pid in [p.pid for p in fleet.cpu]
    busy = [w for w in fleet.c.get("/workers").json() if w["job_id"] == job_id]
    assert [w["pid"] for w in busy] == [pid] and busy[0]["job_tasks"] == ["sentiment"], busy
    job = fleet.wait_state(job_id, "succeeded")
    assert job["attempts"] == 0 and job["result"] == {"sentiment": 1}
    r = fleet.c.post("/predict/sentiment", json={"inputs": ["great film", "awful film"]})
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    wait_for(lambda: all(w["job_id"] is None for w in fleet.c.get("/workers").json()), 30, "workers idle")
    assert _queue_depth(f"{prefix}-cpu") == 0


def test_cancel_queued_and_running(fleet):
    prefix = fleet.settings.celery_queue_prefix
    n = len(_live_cpu(fleet))
    running = [
        fleet.c.post("/train", json=_body(f"busy{i}", max_steps=20_000)).json()["job_id"] for i in range(n)
    ]
    for job_id in running:
        fleet.wait_training(job_id)
    queued = fleet.c.post("/train", json=_body("waiting", max_steps=10)).json()["job_id"]
    assert fleet.job(queued)["state"] == "queued"
    wait_for(lambda: _queue_depth(f"{prefix}-cpu") == 1, 10, "its message in the queue")
    r = fleet.c.post(f"/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    for job_id in running:
        assert fleet.c.post(f"/jobs/{job_id}/cancel").status_code == 200
    for job_id in running:
        assert fleet.wait_state(job_id, "cancelled", timeout=60)["cancel_requested"]
    # a worker freed by the cancel receives the cancelled job's message, acknowledges it, runs nothing
    wait_for(lambda: _queue_depth(f"{prefix}-cpu") == 0, 30, "the cancelled job's message consumed")
    job = fleet.job(queued)
    assert job["state"] == "cancelled" and job["started_at"] is None, job
    assert "waiting" not in [t["name"] for t in fleet.c.get("/tasks").json()]


def test_sigkill_worker_mid_training_another_finishes(fleet):
    job_id = fleet.c.post("/train", json=_body("killed", max_steps=150)).json()["job_id"]
    victim = fleet.wait_training(job_id)
    fleet.kill(victim)
    killed = time.monotonic()
    fleet.start_worker()  # a replacement, for the next test; a live worker takes the job at once

    def restarted() -> bool:
        j = fleet.job(job_id)
        return j["state"] != "running" or (j["attempts"] == 1 and fleet.owner_pid(job_id) != victim)

    wait_for(restarted, 120, "another worker to take the job", every=0.05)
    print(f"\nSIGKILL to the job running on another worker: {time.monotonic() - killed:.2f} s")
    job = fleet.wait_state(job_id, "succeeded")
    assert job["attempts"] == 1, job  # one worker death counted
    assert fleet.owner_pid(job_id) != victim
    r = fleet.c.post("/predict/killed", json={"inputs": ["great film"]})
    assert r.status_code == 200 and r.json()["version"] == 1, r.text  # the killed attempt published nothing
    assert victim not in [w["pid"] for w in fleet.c.get("/workers").json()]  # gone at once, not when stale
    dead = [w for w in fleet.c.get("/workers", params={"include_stale": True}).json() if w["pid"] == victim]
    assert [w["alive"] for w in dead] == [False]


def test_job_that_kills_its_worker_n_times_fails(fleet):
    assert fleet.settings.max_worker_kills == 2
    for proc in _live_cpu(fleet):
        fleet.wait_listed(proc)
    assert len(_live_cpu(fleet)) == 3
    job_id = fleet.c.post("/train", json=_body("killer", max_steps=20_000)).json()["job_id"]
    first = fleet.wait_training(job_id, attempts=0)
    fleet.kill(first)
    second = fleet.wait_training(job_id, attempts=1)
    assert second != first
    fleet.kill(second)  # the third worker receives the message after the second death
    job = fleet.wait_state(job_id, "failed", timeout=60)
    assert job["attempts"] == 2, job
    assert "died 2 times" in job["error"] and "PROMPTHUB_MAX_WORKER_KILLS=2" in job["error"], job["error"]
    assert fleet.c.get("/tasks/killer").status_code == 404


def test_gpu_jobs_go_to_gpu_workers_only_and_sigterm_requeues(fleet):
    """A gpu-class job runs on the gpu worker; SIGTERM stops that worker between two steps and puts
    the job back in the queue, where the idle cpu workers leave it."""
    prefix = fleet.settings.celery_queue_prefix
    assert fleet.gpu is not None
    fleet.wait_listed(fleet.gpu)
    job_id = fleet.c.post("/train", json=_body("ongpu", max_steps=20_000, device_class="gpu")).json()[
        "job_id"
    ]
    assert fleet.wait_training(job_id) == fleet.gpu.pid
    assert _live_cpu(fleet) and all(
        w["job_id"] is None for w in fleet.c.get("/workers").json() if w["device_class"] == "cpu"
    )

    fleet.gpu.send_signal(signal.SIGTERM)
    assert fleet.gpu.wait(120) == 0
    job = fleet.job(job_id)
    assert (job["state"], job["attempts"], job["started_at"]) == ("queued", 0, None), job  # not a death
    assert all(w["device_class"] == "cpu" for w in fleet.c.get("/workers").json())  # a clean stop leaves
    assert _queue_depth(f"{prefix}-gpu") == 1  # its message went back (rejected with requeue)
    time.sleep(3.0)  # idle cpu workers had time to take it, were it in their queue
    job = fleet.job(job_id)
    assert job["state"] == "queued" and job["started_at"] is None, job
    assert _queue_depth(f"{prefix}-gpu") == 1
    assert fleet.c.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    r = fleet.c.post("/train", json=_body("bad", max_steps=5, device_class="tpu"))
    assert r.status_code == 422 and "device_class" in r.text
