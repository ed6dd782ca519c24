"""Safe promotion: POST /train's `activate` (always | never | if_better), decided by the worker."""

from __future__ import annotations

import pytest
import torch

from app import versions
from app.config import Settings
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.db.session import get_sessionmaker, run_migrations
from app.engine.checkpoint import checkpoint_bytes
from app.jobs import worker as worker_mod
from app.jobs.worker import Worker
from app.store import PromptStore
from tests.helpers import make_serving_task

LABELS = ["neg", "pos"]
TRAIN = [{"text": f"a fine film number {i}", "label": "pos"} for i in range(7)] + [
    {"text": "a dull mess", "label": "neg"}
]
EVAL_POS = [{"text": t, "label": "pos"} for t in ("great", "lovely acting", "a joy", "superb")]
HP = {"prefix_length": 4, "reparameterize": False, "lr": 0.05, "epochs": 4, "batch_size": 4, "max_length": 32}


@pytest.fixture
def settings(tmp_path, sqlite_url) -> Settings:
    s = Settings(
        database_url=sqlite_url,
        store_dir=str(tmp_path / "store"),
        data_dir=str(tmp_path / "datasets"),
        backbone="tiny",
        job_heartbeat_s=0.1,
    )
    run_migrations(s.database_url)
    return s


@pytest.fixture
def worker(settings, tiny_backbone, monkeypatch) -> Worker:
    monkeypatch.setattr(worker_mod, "load_backbone", lambda name, device="cpu": tiny_backbone)
    return Worker(settings, worker_id="test-worker")


def constant_version(settings, backbone, name: str, label: str) -> int:
    """Publish a classification version that answers `label` whatever the text (its head's weights
    zero, the bias picking the label): its accuracy on any data is known in advance."""
    task = make_serving_task(backbone, "classification", labels=LABELS, seed=1, max_length=32)
    with torch.no_grad():
        for p in task.head.parameters():
            p.zero_()
        last = [m for m in task.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias[LABELS.index(label)] = 5.0
    blob = checkpoint_bytes(task, backbone, {"source": "test"})
    with get_sessionmaker(settings.database_url)() as s:
        return versions.publish(s, PromptStore(settings.store_dir), name, blob, source="test").version


def run_job(settings, worker, activate: str, eval_records=EVAL_POS, name="sent", **hp):
    payload = {
        "task": name,
        "task_type": "classification",
        "train": {"records": TRAIN},
        "eval": {"records": eval_records} if eval_records else None,
        "hyperparameters": {**HP, **hp},
        "labels": LABELS,
        "activate": activate,
    }
    with get_sessionmaker(settings.database_url)() as s:
        job_id = db_jobs.create_job(s, kind="single", payload=payload, task_names=[name], max_queued=50).id
    assert worker.run_once() is True
    with get_sessionmaker(settings.database_url)() as s:
        job = db_jobs.get_job(s, job_id)
        assert job.state == "succeeded", job.error
        return job, db_tasks.get_task(s, name).active_version


def version_training(settings, name: str, version: int) -> dict:
    with get_sessionmaker(settings.database_url)() as s:
        return db_tasks.get_version(s, name, version).training


def test_if_better_keeps_a_better_active_version_and_says_why(settings, worker, tiny_backbone):
    assert constant_version(settings, tiny_backbone, "sent", "pos") == 1  # accuracy 1.0 on EVAL_POS
    job, active = run_job(settings, worker, "if_better", epochs=1)
    assert job.result == {"sent": 2}  # the version is kept...
    assert active == 1  # ...but not served
    p = job.promotion["sent"]
    assert p["promoted"] is False and p["mode"] == "if_better" and p["compared_with"] == 1
    assert p["metric"] == "accuracy" and p["active"] == 1.0 and p["new"] <= 1.0 and p["eval_rows"] == 4
    assert "active v1's 1.0000 on the same eval data (4 rows)" in p["reason"]
    assert version_training(settings, "sent", 2)["promotion"]["promoted"] is False


def test_if_better_promotes_a_better_version(settings, worker, tiny_backbone):
    constant_version(settings, tiny_backbone, "sent", "neg")  # accuracy 0.0 on EVAL_POS
    job, active = run_job(settings, worker, "if_better")
    p = job.promotion["sent"]
    # the numbers compared are the two versions' accuracy on the very same rows
    with get_sessionmaker(settings.database_url)() as s:
        v2 = db_tasks.get_version(s, "sent", 2)
    assert p["active"] == 0.0 and p["new"] == pytest.approx(v2.metrics["accuracy"])
    assert p["new"] > 0.0, p  # trained on 7 of 8 positive rows: it answers "pos" at least once
    assert p["promoted"] is True and active == 2 and job.result == {"sent": 2}
    assert p["reason"].startswith("accuracy ") and "> active v1's 0.0000" in p["reason"]


def test_if_better_without_eval_data_keeps_the_active_version(settings, worker, tiny_backbone):
    constant_version(settings, tiny_backbone, "sent", "pos")
    job, active = run_job(settings, worker, "if_better", eval_records=None, holdout_fraction=0.25, epochs=1)
    p = job.promotion["sent"]  # 8 training rows: too few to hold any out
    assert p["promoted"] is False and "no eval data" in p["reason"] and active == 1


def test_if_better_holdout_split_is_the_one_trained_on(settings, worker, tiny_backbone):
    """With 20+ training rows and no eval data, the worker compares on the held-out rows that
    training itself evaluated on (the new version's own recorded metric is on the same rows)."""
    from app.engine.train_config import split_holdout

    constant_version(settings, tiny_backbone, "sent", "neg")
    rows = TRAIN * 3
    payload = {
        "task": "sent",
        "task_type": "classification",
        "train": {"records": rows},
        "eval": None,
        "hyperparameters": {**HP, "holdout_fraction": 0.25, "epochs": 2},
        "labels": LABELS,
        "activate": "if_better",
    }
    with get_sessionmaker(settings.database_url)() as s:
        job_id = db_jobs.create_job(s, kind="single", payload=payload, task_names=["sent"], max_queued=50).id
    assert worker.run_once()
    with get_sessionmaker(settings.database_url)() as s:
        job = db_jobs.get_job(s, job_id)
        v2 = db_tasks.get_version(s, "sent", 2)
    p = job.promotion["sent"]
    _, held = split_holdout(rows, None, 0.25, 42)
    assert p["eval_rows"] == len(held) == 6
    assert p["new"] == pytest.approx(v2.metrics["accuracy"])
    neg_share = sum(r["label"] == "neg" for r in held) / len(held)
    assert p["active"] == pytest.approx(neg_share)  # the constant "neg" version on exactly those rows


def test_never_keeps_the_active_version(settings, worker, tiny_backbone):
    constant_version(settings, tiny_backbone, "sent", "pos")
    job, active = run_job(settings, worker, "never", epochs=1)
    assert active == 1 and job.result == {"sent": 2}
    assert job.promotion["sent"] == {
        "mode": "never",
        "compared_with": 1,
        "promoted": False,
        "reason": "activate=never: v1 stays active",
        "version": 2,
    }


def test_always_is_the_default_behaviour(settings, worker, tiny_backbone):
    constant_version(settings, tiny_backbone, "sent", "pos")
    job, active = run_job(settings, worker, "always", epochs=1)
    assert active == 2 and job.promotion["sent"]["promoted"] is True


def test_first_version_is_activated_whatever_the_mode(settings, worker):
    job, active = run_job(settings, worker, "never", name="fresh", epochs=1)
    assert active == 1
    assert job.promotion["fresh"]["reason"] == "the task had no active version"


def test_if_better_with_an_incomparable_active_version_keeps_it(settings, worker, tiny_backbone):
    """An active version with another label set cannot be scored on the new data: kept, and said."""
    task = make_serving_task(tiny_backbone, "classification", labels=["a", "b", "c"], seed=2, max_length=32)
    with get_sessionmaker(settings.database_url)() as s:
        versions.publish(
            s, PromptStore(settings.store_dir), "sent", checkpoint_bytes(task, tiny_backbone, {}), source="t"
        )
    job, active = run_job(settings, worker, "if_better", epochs=1)
    p = job.promotion["sent"]
    if p["promoted"] is False and "could not be evaluated" in p["reason"]:
        assert active == 1
    else:  # the engine scored it (labels it does not know count as wrong): compared normally
        assert p["metric"] == "accuracy" and active == (2 if p["promoted"] else 1)


def test_multitask_decides_per_task(settings, worker, tiny_backbone):
    constant_version(settings, tiny_backbone, "sent", "pos")  # 1.0 on EVAL_POS: cannot be beaten
    task = {"task_type": "classification", "train": {"records": TRAIN}, "eval": {"records": EVAL_POS}}
    payload = {
        "tasks": [{**task, "task": "sent", "labels": LABELS}, {**task, "task": "fresh", "labels": LABELS}],
        "hyperparameters": {**HP, "epochs": 1},
        "per_task_epochs": 0,
        "activate": "if_better",
    }
    with get_sessionmaker(settings.database_url)() as s:
        job_id = db_jobs.create_job(
            s, kind="multitask", payload=payload, task_names=["sent", "fresh"], max_queued=50
        ).id
    assert worker.run_once()
    with get_sessionmaker(settings.database_url)() as s:
        job = db_jobs.get_job(s, job_id)
        assert job.state == "succeeded", job.error
        assert db_tasks.get_task(s, "sent").active_version == 1
        assert db_tasks.get_task(s, "fresh").active_version == 1
    assert job.result == {"sent": 2, "fresh": 1}
    assert job.promotion["sent"]["promoted"] is False and job.promotion["sent"]["active"] == 1.0
    assert job.promotion["fresh"] == {
        "mode": "if_better",
        "promoted": True,
        "reason": "the task had no active version",
        "version": 1,
    }
