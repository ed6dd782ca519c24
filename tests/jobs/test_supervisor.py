"""Issue 12, item 9: the embedded worker is supervised. A real worker process killed with SIGKILL
mid-training is restarted with backoff, its job is recovered at once (not after job_stale_s), and
/readyz reports the worker's state and restarts while predictions stay served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from app.config import Settings
from app.db import keys
from app.db.session import get_sessionmaker, run_migrations
from tests.helpers import free_port, get_job, seed_store, start_server, wait_for, wait_ready

RECORDS = [
    {"text": f"{w} film number {i}", "label": lab}
    for i in range(8)
    for w, lab in (("great", "pos"), ("awful", "neg"))
]


def test_a_worker_that_keeps_dying_is_restarted_with_backoff_then_given_up(settings_factory):
    from app.jobs.supervisor import FAILED, WorkerSupervisor

    settings = settings_factory(
        worker_restart_backoff_s=0.05, worker_restart_backoff_max_s=0.2, worker_max_restarts=3
    )
    spawned: list[float] = []

    def spawn(_settings):
        spawned.append(time.monotonic())
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    sup = WorkerSupervisor(settings, spawn=spawn, recover=lambda s: []).start()
    try:
        wait_for(lambda: sup.health()["state"] == FAILED, 20, "the supervisor to give up")
        h = sup.health()
        assert h["restarts"] == 3 and h["last_exit"] == 3 and h["pid"] is None
        assert len(spawned) == 4
        assert sup.backoffs == [0.05, 0.1, 0.2]  # doubling, capped at the maximum
        assert all(b - a >= 0.05 for a, b in zip(spawned, spawned[1:], strict=False))
    finally:
        sup.stop()


def test_a_worker_over_its_memory_budget_is_stopped_and_its_job_failed_with_that_reason(
    settings_factory, sqlite_url
):
    """PROMPTHUB_JOB_MAX_MEMORY_MB: a worker whose resident memory passes the budget is killed by the
    supervisor; the job it ran is failed naming the budget (not re-queued to go over again) and a new
    worker is started. Without the budget the same worker is left to run (or to an OOM kill)."""
    import socket

    from app.db import job_queue
    from app.db import jobs as db_jobs
    from app.jobs.supervisor import RUNNING, WorkerSupervisor

    hog = "import time; b = b'x' * (300 * 2**20); time.sleep(60)"  # 300 MiB resident
    quiet = "import time; time.sleep(60)"
    settings = settings_factory(
        database_url=sqlite_url, job_max_memory_mb=150, worker_restart_backoff_s=0.05, on_crash="requeue"
    )
    spawned: list[subprocess.Popen] = []

    def spawn(_settings):
        proc = subprocess.Popen([sys.executable, "-c", hog if not spawned else quiet])
        spawned.append(proc)
        if len(spawned) == 1:  # the first "worker" claims a job, as the real one does
            with get_sessionmaker(sqlite_url)() as s:
                job = db_jobs.create_job(
                    s, kind="single", payload={"task": "big"}, task_names=["big"], max_queued=10
                )
                worker_id = f"{socket.gethostname()}:{proc.pid}:hog"
                assert job_queue.claim_job(s, job.id, worker_id)[1] is not None
                jobs.append(job.id)
        return proc

    jobs: list[str] = []
    sup = WorkerSupervisor(settings, spawn=spawn).start()
    try:
        wait_for(lambda: sup.health()["restarts"] == 1, 30, "the worker over budget to be replaced")
        h = sup.health()
        assert h["state"] == RUNNING and h["last_exit"] == -signal.SIGKILL
        assert "memory budget" in h["error"] and "PROMPTHUB_JOB_MAX_MEMORY_MB=150" in h["error"]
        job = get_job(settings, jobs[0])
        assert job.state == "failed" and "memory budget" in job.error, (job.state, job.error)
        assert sup.recovered_jobs == jobs
        time.sleep(1.0)  # the new, small worker stays
        assert sup.health()["restarts"] == 1 and spawned[1].poll() is None
    finally:
        sup.stop()
        for p in spawned:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_settings_refuse_a_negative_memory_budget(settings_factory):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="0 \\(no budget\\) or more"):
        settings_factory(job_max_memory_mb=-1)
    assert settings_factory().job_max_memory_mb == 0


@pytest.mark.slow  # ~20-40 s: a server and its worker process on the tiny backbone
def test_sigkilled_worker_is_restarted_and_its_job_recovered_at_once(tmp_path, sqlite_url, tiny_backbone_dir):
    settings = Settings(
        database_url=sqlite_url,
        store_dir=str(tmp_path / "store"),
        data_dir=str(tmp_path / "data"),
        backbone=str(tiny_backbone_dir),
        port=free_port(),
        auth="required",
        embedded_worker=True,
        worker_poll_s=0.1,
        job_heartbeat_s=0.2,
        job_stale_s=60.0,  # the periodic recovery cannot be what recovers the job here
        worker_restart_backoff_s=3.0,  # the job is recovered before the new worker even starts
    )
    run_migrations(sqlite_url)
    seed_store(settings, tiny_backbone_dir, ["sentiment"])
    with get_sessionmaker(sqlite_url)() as s:
        token = keys.create_key(s, name="sup", scopes=["admin"])[1]
    base = f"http://127.0.0.1:{settings.port}"
    log = tmp_path / "server.log"
    proc = start_server(settings, log, worker=True)
    try:
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            worker = c.get("/readyz").json()["worker"]
            assert worker["state"] == "running" and worker["restarts"] == 0 and worker["pid"]
            body = {
                "task": "trained",
                "task_type": "classification",
                "train": {"records": RECORDS},
                # no early stopping: it trains until cancelled (else it could end before a wait sees it)
                "hyperparameters": {
                    "epochs": 100,
                    "max_steps": 100_000,
                    "batch_size": 4,
                    "max_length": 16,
                    "early_stopping_patience": 0,
                },
            }
            job_id = c.post("/train", json=body).json()["job_id"]

            def training() -> bool:
                j = c.get(f"/jobs/{job_id}").json()
                return j["state"] == "running" and (j["progress"] or {}).get("step", 0) >= 3

            wait_for(training, 120, "training to start")
            os.kill(worker["pid"], signal.SIGKILL)  # what the kernel's OOM killer does
            killed = time.monotonic()
            wait_for(lambda: get_job(settings, job_id).state != "running", 10, "the job to be recovered")
            recovered_after = time.monotonic() - killed
            job = get_job(settings, job_id)
            assert job.state == "queued" and job.attempts == 1, (job.state, job.error)
            assert "worker died" in (job.progress or {}).get("message", "")
            ready = c.get("/readyz")
            assert ready.status_code == 200  # predictions are still served
            assert ready.json()["worker"]["state"] == "restarting"
            assert ready.json()["training"] == "down"
            assert c.post("/predict/sentiment", json={"inputs": ["x"]}).status_code == 200

            wait_for(lambda: c.get("/readyz").json()["worker"]["restarts"] == 1, 30, "the restart")
            worker2 = c.get("/readyz").json()["worker"]
            assert worker2["state"] == "running" and worker2["pid"] not in (None, worker["pid"])
            assert worker2["last_exit"] == -signal.SIGKILL
            # the re-queued job runs again on the new worker; cancel it and train a short one
            wait_for(training, 120, "the job to run again")
            c.post(f"/jobs/{job_id}/cancel")
            body["hyperparameters"] = {"epochs": 1, "batch_size": 4, "max_length": 16}
            short = c.post("/train", json=body).json()["job_id"]
            wait_for(lambda: c.get(f"/jobs/{short}").json()["state"] == "succeeded", 120, "a new job")
            assert c.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
        text = log.read_text()
        assert "died unexpectedly: killed by signal 9" in text
        print(f"\nworker SIGKILL: job recovered {recovered_after:.2f} s after the kill, 1 restart")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
