"""Every configurable limit is refused with its documented status and message (docs/security.md)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from app.db import job_queue
from app.db import jobs as db_jobs
from app.db.session import get_sessionmaker

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
RECORD = {"text": "x", "label": "a"}


def _client(settings_factory, hub_factory, **limits):
    from app.main import create_app
    from tests.helpers import local_client, publish_task

    settings = settings_factory(**limits)
    hub = hub_factory(settings)
    client = local_client(create_app(settings, hub))
    client.__enter__()
    publish_task(hub.settings, hub.backbone, "sentiment")
    return client


def _train(task="sentiment", records=None):
    return {"task": task, "task_type": "classification", "train": {"records": records or [RECORD, RECORD]}}


def test_request_limits(settings_factory, hub_factory):
    c = _client(
        settings_factory,
        hub_factory,
        max_body_bytes=4000,
        max_inputs_per_request=3,
        max_text_chars=50,
        max_upload_bytes=300,
        max_dataset_rows=4,
        max_queued_jobs=2,
    )
    try:
        r = c.post("/predict/sentiment", json={"inputs": ["x" * 5000]})
        assert r.status_code == 413
        assert r.json()["detail"] == "request body too large: the limit is 4000 bytes"

        r = c.post("/predict/sentiment", json={"inputs": ["a"] * 4})
        assert r.status_code == 422
        assert r.json()["detail"][0] == {
            "loc": ["body", "inputs"],
            "msg": "4 inputs in one request; the limit is 3",
            "type": "too_long",
        }

        r = c.post("/predict/sentiment", json={"inputs": ["ok", "y" * 51]})
        assert r.status_code == 422
        assert (
            r.json()["detail"][0]["msg"] == "inputs[1].text: 51 characters long; the limit is 50 characters"
        )
        r = c.post("/predict/sentiment", json={"inputs": [{"text": "a", "text_pair": "z" * 60}]})
        assert (
            r.status_code == 422 and "inputs[0].text_pair: 60 characters long" in r.json()["detail"][0]["msg"]
        )
        assert c.post("/predict/sentiment", json={"inputs": ["y" * 50]}).status_code == 200

        line = b'{"text": "x", "label": "a"}\n'
        files = {"file": ("d.jsonl", line * 12)}
        r = c.post("/datasets", files=files, data={"task_type": "classification"})
        assert r.status_code == 413 and r.json()["detail"] == "upload too large: the limit is 300 bytes"

        files = {"file": ("d.jsonl", line * 5)}
        r = c.post("/datasets", files=files, data={"task_type": "classification"})
        assert (
            r.status_code == 422 and r.json()["detail"][0]["msg"] == "line 5: too many rows: the limit is 4"
        )
        r = c.post("/datasets", files=files)
        assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "too many rows: 5, the limit is 4"

        r = c.post("/train", json=_train(records=[RECORD] * 5))
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "train", "records"]
        assert r.json()["detail"][0]["msg"] == "too many rows: 5, the limit is 4"

        assert c.post("/train", json=_train()).status_code == 202
        assert c.post("/train", json=_train()).status_code == 202
        r = c.post("/train", json=_train())
        assert r.status_code == 429 and r.headers["Retry-After"] == "30"
        assert r.json()["detail"] == "2 training jobs are queued or running (limit 2); try again later"
    finally:
        c.__exit__(None, None, None)


def test_tasks_per_multitask_request(settings_factory, hub_factory):
    c = _client(settings_factory, hub_factory)
    try:
        body = {"tasks": [_train(task=f"t{i}") for i in range(33)]}
        r = c.post("/train", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tasks"]
    finally:
        c.__exit__(None, None, None)


def _queue(url: str, n: int) -> list[str]:
    with get_sessionmaker(url)() as s:
        return [
            db_jobs.create_job(
                s, kind="single", payload={"task": f"t{i}"}, task_names=[f"t{i}"], max_queued=100
            ).id
            for i in range(n)
        ]


def test_max_running_jobs_is_enforced_at_claim(db_url):
    _queue(db_url, 4)
    maker = get_sessionmaker(db_url)
    with maker() as s:
        assert job_queue.claim_next_job(s, "w1", max_running=2) is not None
        assert job_queue.claim_next_job(s, "w2", max_running=2) is not None
        assert job_queue.claim_next_job(s, "w3", max_running=2) is None  # 2 running: the third waits
        assert job_queue.running_jobs(s) == 2
        first = db_jobs.list_jobs(s, state="running")[0]
        db_jobs.finish_job(s, first.id, "succeeded")
        assert job_queue.claim_next_job(s, "w3", max_running=2) is not None
        assert job_queue.claim_next_job(s, "w4", max_running=None) is not None  # no limit given: no limit


def test_max_running_jobs_holds_under_racing_workers(db_url):
    """8 threads (each its own session) race to claim 20 jobs with max_running=3: never more than 3."""
    _queue(db_url, 20)
    maker = get_sessionmaker(db_url)
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(k: int) -> None:
        barrier.wait()
        for _ in range(10):
            with maker() as s:
                job = job_queue.claim_next_job(s, f"w{k}", max_running=3)
                if job is not None:
                    with lock:
                        claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with maker() as s:
        assert job_queue.running_jobs(s) == 3
    assert len(claimed) == len(set(claimed)) == 3


def test_worker_respects_max_running_jobs(settings_factory, tiny_backbone, sqlite_url, tmp_path):
    from app.jobs.worker import Worker

    settings = settings_factory(database_url=sqlite_url, max_running_jobs=1)
    ids = _queue(sqlite_url, 2)
    with get_sessionmaker(sqlite_url)() as s:
        job_queue.claim_next_job(s, "elsewhere")  # another worker is busy with the first job
    w = Worker(settings, worker_id="w", backbone=tiny_backbone)
    assert w.run_once() is False  # the fleet is at its limit: nothing is claimed
    with get_sessionmaker(sqlite_url)() as s:
        assert db_jobs.get_job(s, ids[1]).state == "queued"


def test_settings_refuse_nonsense_limits(settings_factory):
    from pydantic import ValidationError

    for name in ("max_body_bytes", "max_inputs_per_request", "max_running_jobs", "max_queued_jobs"):
        with pytest.raises(ValidationError, match="at least 1"):
            settings_factory(**{name: 0})


def test_every_limit_is_documented():
    """docs/security.md names each limit's environment variable and its error."""
    from app.config import Settings

    text = DOCS.read_text()
    limits = [
        "max_body_bytes",
        "max_inputs_per_request",
        "max_text_chars",
        "max_upload_bytes",
        "max_dataset_rows",
        "max_queued_jobs",
        "max_running_jobs",
        "max_queue_rows",
        "auth",
        "auth_cache_s",
    ]
    assert set(limits) <= set(Settings.model_fields)
    for name in limits:
        assert f"PROMPTHUB_{name.upper()}" in text, name
    for message in (
        "request body too large: the limit is",
        "inputs in one request; the limit is",
        "characters long; the limit is",
        "upload too large: the limit is",
        "too many rows",
        "training jobs are queued or running",
        "the prediction queue is full",
    ):
        assert re.search(re.escape(message), text, re.I), message
