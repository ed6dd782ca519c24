"""End to end on a real server: uvicorn subprocess, embedded worker, real MiniLM backbone.

Train a task through the API, wait for the job, predict with it; train again and the new
version is served by the same running server, without a restart. Every wait is bounded.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import minilm_server_settings, start_server, stop_server

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 240
JOB_TIMEOUT_S = 300

RECORDS = [
    {"text": t, "label": lab}
    for t, lab in [
        ("I loved this movie, wonderful acting", "pos"),
        ("a great and touching story", "pos"),
        ("brilliant, funny and warm", "pos"),
        ("one of the best films this year", "pos"),
        ("terrible plot and bad acting", "neg"),
        ("boring, I fell asleep", "neg"),
        ("an awful waste of time", "neg"),
        ("the worst film I have seen", "neg"),
    ]
]


def _wait(what: str, timeout_s: float, check, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"server exited with {proc.returncode} while waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}:\n{log.read_text()[-4000:]}")


def _train_and_wait(c: httpx.Client, body: dict, proc: subprocess.Popen, log: Path) -> dict:
    r = c.post("/train", json=body)
    assert r.status_code == 202, r.text
    location = r.headers["Location"]

    def done():
        job = c.get(location).json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = _wait(f"job {location}", JOB_TIMEOUT_S, done, proc, log)
    assert job["state"] == "succeeded", job
    return job


def test_train_then_predict_on_a_running_server(tmp_path: Path):
    settings = minilm_server_settings(tmp_path)
    port = settings.port
    log = tmp_path / "server.log"
    proc = start_server(settings, log, worker=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            _wait("/healthz", 60, lambda: c.get("/healthz").status_code == 200, proc, log)
            _wait("/readyz", READY_TIMEOUT_S, lambda: c.get("/readyz").status_code == 200, proc, log)
            assert c.post("/predict/reviews", json={"inputs": ["x"]}).status_code == 404

            hp = {
                "max_steps": 30,
                "epochs": 30,
                "batch_size": 8,
                "prefix_length": 8,
                "lr": 0.02,
                "max_length": 32,
            }
            body = {
                "task": "reviews",
                "task_type": "classification",
                "train": {"records": RECORDS},
                "hyperparameters": hp,
            }
            _train_and_wait(c, body, proc, log)
            r = c.post("/predict/reviews", json={"inputs": ["what a wonderful film", "awful and boring"]})
            assert r.status_code == 200, r.text
            first = r.json()
            assert first["version"] == 1
            assert all(p["label"] in ("pos", "neg") for p in first["predictions"])

            body["hyperparameters"] = {**hp, "max_steps": 10, "seed": 7}
            _train_and_wait(c, body, proc, log)
            r = c.post("/predict/reviews", json={"inputs": ["what a wonderful film", "awful and boring"]})
            assert r.status_code == 200 and r.json()["version"] == 2  # served at once, no restart
            detail = c.get("/tasks/reviews").json()
            assert [v["version"] for v in detail["versions"]] == [1, 2] and detail["active_version"] == 2
            assert 'prompthub_jobs{state="succeeded"} 2.0' in c.get("/metrics").text
    finally:
        stop_server(proc)
