"""Training for an int8 fleet through POST /train: the `precision` option, the worker's default
(its servers' PROMPTHUB_PRECISION), and the version's recorded precision that int8 servers check."""

from __future__ import annotations

import torch

from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.engine.checkpoint import load_checkpoint_bytes, recorded_precision
from app.jobs.worker import Worker
from app.store import PromptStore
from tests.helpers import session_for
from tests.jobs.test_refit_job import RECORDS

HP = {"epochs": 1, "batch_size": 8, "max_length": 16, "refit": False}


def _train(client, settings, worker_settings, backbone, name: str, **hp) -> tuple[dict, object]:
    r = client.post(
        "/train",
        json={
            "task": name,
            "task_type": "classification",
            "train": {"records": RECORDS},
            "hyperparameters": {**HP, **hp},
        },
    )
    assert r.status_code == 202, r.text
    assert Worker(worker_settings, worker_id="int8-worker", backbone=backbone).run_once()
    with session_for(settings) as s:
        job = db_jobs.get_job(s, r.json()["job_id"])
        assert job.state == "succeeded", job.error
        version = db_tasks.get_version(s, name, job.result[name])
        training, sha, number = version.training, version.sha256, version.version
    data = PromptStore(settings.store_dir).read_version(name, number, sha)
    return training, load_checkpoint_bytes(data, backbone)


def test_precision_int8_trains_for_the_int8_backbone_and_the_version_says_so(client, settings, tiny_backbone):
    before = {n: p.clone() for n, p in tiny_backbone.model.state_dict().items()}
    training, task = _train(client, settings, settings, tiny_backbone, "for-int8", precision="int8")
    assert recorded_precision(task) == "int8" and training["config"]["precision"] == "int8"
    assert training["config"]["int8_keep_ffn_out_fp32"] is False  # the served graph it trained for
    training, task = _train(client, settings, settings, tiny_backbone, "for-fp32")
    assert recorded_precision(task) == "fp32" and training["config"]["precision"] == "fp32"
    after = tiny_backbone.model.state_dict()  # the worker's (shared) backbone was never touched
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_worker_of_an_int8_fleet_trains_for_int8_unless_told_otherwise(client, settings, tiny_backbone):
    fleet = settings.model_copy(
        update={"runtime": "onnx", "precision": "int8", "int8_keep_ffn_out_fp32": True}
    )
    training, task = _train(client, settings, fleet, tiny_backbone, "fleet-default")
    assert recorded_precision(task) == "int8" and training["config"]["int8_keep_ffn_out_fp32"] is True
    training, task = _train(client, settings, fleet, tiny_backbone, "fleet-fp32", precision="fp32")
    assert recorded_precision(task) == "fp32"


def test_an_unknown_precision_is_a_422_naming_the_field(client):
    r = client.post(
        "/train",
        json={
            "task": "bad",
            "task_type": "classification",
            "train": {"records": RECORDS},
            "hyperparameters": {"precision": "int4"},
        },
    )
    assert r.status_code == 422 and "precision" in r.text
