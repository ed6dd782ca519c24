"""A POST /train job with no eval data refits: the published version was trained on all of train
for the epochs its held-out split chose, says so in its metadata, and reports the held-out split's
metrics. A job that needs the split kept out (activate=if_better compares on it) does not refit."""

from __future__ import annotations

from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.jobs.worker import Worker
from tests.helpers import session_for

RECORDS = [
    {"text": f"{w} film number {i}", "label": lab}
    for i in range(10)
    for w, lab in (("great", "pos"), ("lovely", "pos"), ("awful", "neg"), ("dull", "neg"))
]
HP = {"epochs": 2, "batch_size": 8, "max_length": 16, "early_stopping_patience": 0}


def _run(client, settings, tiny_backbone, **body) -> tuple[dict, dict]:
    r = client.post(
        "/train",
        json={"task": "sent", "task_type": "classification", "train": {"records": RECORDS}, **body},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert Worker(settings, worker_id="refit-worker", backbone=tiny_backbone).run_once()
    with session_for(settings) as s:
        job = db_jobs.get_job(s, job_id)
        assert job.state == "succeeded", job.error
        version = db_tasks.get_version(s, "sent", job.result["sent"])
        return job.metrics, version.training


def test_a_job_without_eval_data_publishes_the_refit_and_says_so(client, settings, tiny_backbone):
    metrics, training = _run(client, settings, tiny_backbone, hyperparameters=HP)
    assert training["refit"] == {"epochs": 2, "examples": 40, "held_out": 4}
    assert metrics["n"] == 4  # the held-out split's metrics
    assert training["steps"] == 2 * 5 + 2 * 5  # 36 rows, then all 40, at batch 8


def test_if_better_and_refit_off_keep_the_split_out(client, settings, tiny_backbone):
    _, training = _run(client, settings, tiny_backbone, hyperparameters={**HP, "refit": False})
    assert "refit" not in training
    _, training = _run(client, settings, tiny_backbone, hyperparameters=HP, activate="if_better")
    assert "refit" not in training
