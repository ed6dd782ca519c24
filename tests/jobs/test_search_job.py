"""Built-in search: POST /train with "search" is validated (422 naming the field), queued, run by
the worker trial by trial (progress per trial) and the best trial's version is published with
the search log in its metadata."""

from __future__ import annotations

import pytest

from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.engine.checkpoint import read_metadata
from app.jobs.worker import Worker
from app.store import PromptStore
from tests.helpers import session_for

RECORDS = [
    {"text": f"{w} film number {i}", "label": lab}
    for i in range(4)
    for w, lab in (("great", "pos"), ("lovely", "pos"), ("awful", "neg"), ("dull", "neg"))
]


def _body(**kw):
    body = {
        "task": "sent",
        "task_type": "classification",
        "train": {"records": RECORDS},
        "eval": {"records": RECORDS[:8]},
        "hyperparameters": {"epochs": 2, "batch_size": 8, "max_length": 16},
    }
    body.update(kw)
    return body


@pytest.mark.parametrize(
    ("search", "loc"),
    [
        ({"trials": 0}, ["body", "search", "trials"]),
        ({"trials": 51}, ["body", "search", "trials"]),
        ({"trials": 2, "metric": "token_accuracy"}, ["body", "search", "metric"]),
        ({"trials": 2, "timeout_s": -1}, ["body", "search", "timeout_s"]),
        ({"trials": 2, "bogus": 1}, ["body", "search", "bogus"]),
        ({"metric": "accuracy"}, ["body", "search", "trials"]),
    ],
)
def test_bad_search_requests_are_422_naming_the_field(client, search, loc):
    r = client.post("/train", json=_body(search=search))
    assert r.status_code == 422, r.text
    assert any(e["loc"] == loc for e in r.json()["detail"]), r.json()


def test_a_search_cannot_start_from_another_task(client):
    r = client.post("/train", json=_body(search={"trials": 2}, init_from="other"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "search"], r.text


def test_a_three_trial_search_publishes_the_best_with_its_log(client, settings, tiny_backbone, monkeypatch):
    from app.jobs.progress import JobRun

    r = client.post("/train", json=_body(search={"trials": 3, "metric": "accuracy"}))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    with session_for(settings) as s:
        assert db_jobs.get_job(s, job_id).payload["search"]["trials"] == 3
    messages: list[str] = []
    progress = JobRun.progress

    def spy(self, p):
        messages.append(p.message)
        progress(self, p)

    monkeypatch.setattr(JobRun, "progress", spy)
    assert Worker(settings, worker_id="search-worker", backbone=tiny_backbone).run_once()
    with session_for(settings) as s:
        job = db_jobs.get_job(s, job_id)
        assert job.state == "succeeded", job.error
        ver = db_tasks.get_version(s, "sent", 1)
        training = ver.training
    search = training["search"]
    assert search["trials"] == 3 and search["metric"] == "accuracy" and len(search["log"]) == 3
    assert {e["state"] for e in search["log"]} <= {"complete", "pruned", "failed"}
    best = next(e for e in search["log"] if e["trial"] == search["best_trial"])
    assert best["state"] == "complete" and best["value"] == search["best_value"]
    assert set(best["params"]) == {"lr", "prefix_length", "layers", "reparameterize"}
    doc = read_metadata(PromptStore(settings.store_dir).path("sent", 1))
    assert doc["spec"]["prefix_length"] == best["params"]["prefix_length"]
    assert doc["training"]["search"]["best_trial"] == search["best_trial"]
    assert any(m.startswith("search trial 1/3") for m in messages)
    assert any(m.startswith("search trial 3/3") for m in messages)


def test_a_requeued_search_resumes_and_publishes_what_an_uninterrupted_one_does(
    client, settings, tiny_backbone, monkeypatch
):
    """A worker stopping inside trial 2 puts the search back in the queue with its state; the next
    run reruns no finished trial, and the version it publishes (trials, scores, best prefix) is the
    one an uninterrupted search publishes. The state goes when the job ends."""
    import torch

    from app.engine.checkpoint import load_checkpoint_bytes
    from app.jobs.progress import JobRun

    state_dir = str(settings.store_dir) + "-state"
    worker = Worker(
        settings.model_copy(update={"checkpoint_every_s": 1e-6, "train_state_dir": state_dir}),
        worker_id="search-worker",
        backbone=tiny_backbone,
    )
    messages: list[str] = []
    progress = JobRun.progress

    def stop_in_trial_2(self, p):
        messages.append(p.message)
        progress(self, p)
        if p.message.startswith("search trial 2/3") and not self.worker.stop_event.is_set():
            if not any(m.startswith("search resumed") for m in messages):
                self.worker.stop_event.set()  # stopping: the job goes back to the queue

    monkeypatch.setattr(JobRun, "progress", stop_in_trial_2)
    body = _body(search={"trials": 3, "metric": "accuracy"})
    job_id = client.post("/train", json=body).json()["job_id"]
    assert worker.run_once()
    with session_for(settings) as s:
        assert db_jobs.get_job(s, job_id).state == "queued"
    state = worker._search_state(job_id)
    assert state.doc_path.is_file()  # kept for the next attempt
    worker.stop_event.clear()
    assert worker.run_once()
    assert "search resumed after 1 of 3 trials" in messages
    assert sum(m.startswith("search trial 1/3 done") for m in messages) == 1  # trial 1 ran once
    assert not state.root.exists()  # cleaned up when the job ended
    ref_id = client.post("/train", json={**body, "task": "ref"}).json()["job_id"]
    assert worker.run_once()

    def published(name: str, job: str):
        with session_for(settings) as s:
            assert db_jobs.get_job(s, job).state == "succeeded"
            ver = db_tasks.get_version(s, name, 1)
            sha, training = ver.sha256, ver.training
        data = PromptStore(settings.store_dir).read_version(name, 1, sha)
        return load_checkpoint_bytes(data, tiny_backbone), training["search"]

    resumed, log = published("sent", job_id)
    ref, ref_log = published("ref", ref_id)
    for key in ("best_trial", "best_value", "best_params", "log"):
        assert log[key] == ref_log[key], key
    assert torch.equal(resumed.kv, ref.kv)
