"""A training job put back in the queue mid-run resumes from its saved state and publishes the
same version an uninterrupted job publishes; the state file goes when the job ends."""

from __future__ import annotations

from pathlib import Path

import torch

from app.db import tasks as db_tasks
from app.db.session import get_sessionmaker
from app.engine.checkpoint import load_checkpoint_bytes
from app.jobs.progress import JobRun
from app.store import PromptStore
from tests.jobs.test_worker import job, settings, single, submit, worker  # noqa: F401 - fixtures


def _published(settings, backbone, name):  # noqa: F811
    with get_sessionmaker(settings.database_url)() as s:
        ver = db_tasks.get_version(s, name, 1)
        sha = ver.sha256
        training = ver.training
    data = PromptStore(settings.store_dir).read_version(name, 1, sha)
    return load_checkpoint_bytes(data, backbone), training


def test_a_requeued_job_resumes_and_equals_an_uninterrupted_one(worker, settings, tiny_backbone, monkeypatch):  # noqa: F811
    state_dir = settings.store_dir + "-state"
    worker.settings = settings.model_copy(update={"checkpoint_every_s": 1e-6, "train_state_dir": state_dir})
    payload = single(epochs=3, batch_size=4, prefix_dropout=0.2)  # 8 records: 2 steps an epoch
    original = JobRun.progress
    stopped: list[str] = []

    def stop_at_step_3(self, p):
        original(self, p)
        if p.step == 3 and not stopped:  # the first job only, once
            stopped.append(self.job_id)
            self.worker.stop_event.set()  # the worker is stopping: the job goes back to the queue

    monkeypatch.setattr(JobRun, "progress", stop_at_step_3)
    job_id = submit(settings, payload)
    assert worker.run_once()
    j = job(settings, job_id)
    assert j.state == "queued"
    state = worker._state_checkpointer(job_id).path
    assert state.is_file()  # kept for the next attempt
    worker.stop_event.clear()
    assert worker.run_once()
    j = job(settings, job_id)
    assert j.state == "succeeded", j.error
    assert j.progress["resumed_from_step"] == 3 and j.progress["step"] == 6
    assert not state.exists()  # cleaned up when the job ended

    ref_id = submit(settings, {**payload, "task": "ref"})
    assert worker.run_once()
    assert job(settings, ref_id).state == "succeeded"
    resumed, training = _published(settings, tiny_backbone, "sent")
    ref, ref_training = _published(settings, tiny_backbone, "ref")
    assert training["resumed_from_step"] == 3 and "resumed_from_step" not in ref_training
    assert torch.equal(resumed.kv, ref.kv)
    ha, hb = resumed.head.state_dict(), ref.head.state_dict()
    assert all(torch.equal(ha[k], hb[k]) for k in ha)

    def per_epoch(history):  # the metrics are keyed by task name: "sent" and "ref"
        return [(h["epoch"], h["step"], h["loss"], list(h["metrics"].values())) for h in history]

    assert per_epoch(training["history"]) == per_epoch(ref_training["history"])


def test_a_requeued_multitask_job_resumes_in_the_stage_it_was_in(
    worker,  # noqa: F811
    settings,  # noqa: F811
    tiny_backbone,
    monkeypatch,
):
    """A multi-task job put back in the queue during its second task's own stage resumes there (the
    joint stage and the first task's stage are not trained again) and publishes what an
    uninterrupted job publishes."""
    from tests.jobs.test_worker import HP, RECORDS

    state_dir = settings.store_dir + "-state"
    worker.settings = settings.model_copy(update={"checkpoint_every_s": 1e-6, "train_state_dir": state_dir})

    def payload(a: str, b: str) -> dict:
        tasks = [
            {"task": a, "task_type": "classification", "train": {"records": RECORDS}, "eval": None},
            {
                "task": b,
                "task_type": "classification",
                "train": {"records": [{**r, "label": r["label"].upper()} for r in RECORDS]},
                "eval": None,
            },
        ]
        return {"tasks": tasks, "hyperparameters": {**HP, "epochs": 2}, "per_task_epochs": 1}

    original = JobRun.progress
    seen: list = []
    stopped: list[str] = []

    def stop_in_second_stage(self, p):
        original(self, p)
        seen.append(p)
        # "epoch 1 done" twice: the joint stage's first epoch, then the first task's own stage
        in_second_stage = sum(q.message == "epoch 1 done" for q in seen) == 2 and not p.message
        if in_second_stage and not stopped:  # the first job only, once
            stopped.append(self.job_id)
            self.worker.stop_event.set()

    monkeypatch.setattr(JobRun, "progress", stop_in_second_stage)
    job_id = submit(settings, payload("mt-a", "mt-b"), "multitask")
    assert worker.run_once()
    assert job(settings, job_id).state == "queued"
    worker.stop_event.clear()
    seen.clear()
    assert worker.run_once()
    j = job(settings, job_id)
    assert j.state == "succeeded", j.error
    assert seen[0].message.startswith("resumed from step")  # the joint stage: its end state
    assert not list(Path(state_dir).glob(f"{job_id}*"))  # cleaned up when the job ended
    ref_id = submit(settings, payload("ref-a", "ref-b"), "multitask")
    assert worker.run_once() and job(settings, ref_id).state == "succeeded"
    for a, b in (("mt-a", "ref-a"), ("mt-b", "ref-b")):
        got, _ = _published(settings, tiny_backbone, a)
        ref, _ = _published(settings, tiny_backbone, b)
        assert torch.equal(got.kv, ref.kv)
        ha, hb = got.head.state_dict(), ref.head.state_dict()
        assert all(torch.equal(ha[k], hb[k]) for k in ha)
