"""The training worker: end to end on a tiny random backbone, cancellation, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from app.config import Settings
from app.db import datasets as db_datasets
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.db.session import REPO_ROOT, get_sessionmaker
from app.engine.checkpoint import load_checkpoint_bytes, parse_header, read_metadata
from app.jobs import worker as worker_mod
from app.jobs.process import settings_env, spawn_embedded_worker, stop_embedded_worker
from app.jobs.worker import Worker
from app.store import PromptStore
from tests.helpers import process_env, wait_for

RECORDS = [
    {"text": "a wonderful, moving film", "label": "pos"},
    {"text": "great acting and a fine story", "label": "pos"},
    {"text": "I loved every minute", "label": "pos"},
    {"text": "brilliant", "label": "pos"},
    {"text": "dull and far too long", "label": "neg"},
    {"text": "a boring mess", "label": "neg"},
    {"text": "I hated it", "label": "neg"},
    {"text": "terrible", "label": "neg"},
]
HP = {
    "method": "p-tuning-v2",
    "prefix_length": 4,
    "reparameterize": False,
    "layers": None,
    "head": "linear",
    "label_words": None,
    "lr": 0.01,
    "epochs": 2,
    "batch_size": 4,
    "max_length": 32,
    "doc_stride": None,
    "seed": 0,
    "max_steps": None,
}


def single(task="sent", records=RECORDS, eval_records=RECORDS[:4], init_from=None, **hp):
    return {
        "task": task,
        "task_type": "classification",
        "train": {"records": records, "dataset_id": None},
        "eval": {"records": eval_records, "dataset_id": None} if eval_records else None,
        "hyperparameters": {**HP, **hp},
        "init_from": init_from,
        "labels": None,
    }


def long_job(task="sent"):
    """A job that trains for minutes (800 steps an epoch, 100 epochs, no early stopping) within
    the hyperparameter ranges the worker accepts."""
    return single(task, RECORDS * 100, None, epochs=100, batch_size=1, holdout_fraction=0.0)


@pytest.fixture
def settings(tmp_path, sqlite_url) -> Settings:
    return Settings(
        database_url=sqlite_url,
        store_dir=str(tmp_path / "store"),
        data_dir=str(tmp_path / "datasets"),
        backbone="tiny",
        job_heartbeat_s=0.1,
        worker_poll_s=0.05,
        job_stale_s=30.0,
    )


@pytest.fixture
def worker(settings, tiny_backbone, monkeypatch) -> Worker:
    calls: list[str] = []

    def fake_load(name, device="cpu"):
        calls.append(name)
        return tiny_backbone

    monkeypatch.setattr(worker_mod, "load_backbone", fake_load)
    w = Worker(settings, worker_id="test-worker")
    w.load_calls = calls  # type: ignore[attr-defined]
    return w


def submit(settings: Settings, payload: dict, kind: str = "single") -> str:
    names = [t["task"] for t in payload["tasks"]] if kind == "multitask" else [payload["task"]]
    with get_sessionmaker(settings.database_url)() as s:
        return db_jobs.create_job(s, kind=kind, payload=payload, task_names=names, max_queued=50).id


def job(settings: Settings, job_id: str):
    with get_sessionmaker(settings.database_url)() as s:
        return db_jobs.get_job(s, job_id)


# ------------------------------------------------------------------------------ in process


def test_run_once_without_jobs(worker):
    assert worker.run_once() is False


def test_train_single_job_end_to_end(worker, settings, tiny_backbone):
    job_id = submit(settings, single())
    assert worker.run_once() is True
    j = job(settings, job_id)
    assert j.state == "succeeded", j.error
    assert j.result == {"sent": 1}
    assert "accuracy" in j.metrics
    assert j.progress["step"] == j.progress["total"] and j.progress["message"] == "done"
    assert j.finished_at is not None and j.worker_id == "test-worker"

    store = PromptStore(settings.store_dir)
    with get_sessionmaker(settings.database_url)() as s:
        task = db_tasks.get_task(s, "sent")
        assert task.active_version == 1 and task.labels == ["neg", "pos"]
        ver = db_tasks.get_version(s, "sent", 1)
        assert ver.file == "sent/v0001.safetensors" and ver.source == f"job:{job_id}"
        assert ver.training["job_id"] == job_id and ver.training["data"]["train"]["rows"] == 8
        assert ver.spec["prefix_length"] == 4
    data = store.read_version("sent", 1, ver.sha256)
    served = load_checkpoint_bytes(data, tiny_backbone, expected_sha256=ver.sha256)
    assert served.spec.labels == ["neg", "pos"] and served.prefix_length == 4
    doc = read_metadata(store.path("sent", 1))
    assert doc["source"] == f"job:{job_id}" and doc["data"]["train"]["kind"] == "records"
    sidecar = json.loads(store.sidecar_path("sent", 1).read_text())
    assert sidecar["sha256"] == ver.sha256

    # retrain: version 2, activated; init_from another task starts from its prefix
    job2 = submit(settings, single(epochs=1))
    job3 = submit(settings, single(task="sent-copy", init_from="sent", eval_records=None, epochs=1))
    assert worker.run_once() and worker.run_once()
    assert job(settings, job2).result == {"sent": 2}
    j3 = job(settings, job3)
    assert j3.state == "succeeded", j3.error and j3.result == {"sent-copy": 1}
    with get_sessionmaker(settings.database_url)() as s:
        assert db_tasks.get_task(s, "sent").active_version == 2
        assert db_tasks.get_version(s, "sent-copy", 1).training["init_from"] == "sent"
    assert worker.load_calls == ["tiny"]  # the backbone is loaded once


def test_train_from_dataset(worker, settings, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    with get_sessionmaker(settings.database_url)() as s:
        ds = db_datasets.create_dataset(
            s,
            filename="train.jsonl",
            task_type="classification",
            rows=len(RECORDS),
            columns=["text", "label"],
            path=str(path),
            sha256="ab" * 32,
            size_bytes=path.stat().st_size,
        )
    payload = single(eval_records=None, epochs=1)
    payload["train"] = {"records": None, "dataset_id": ds.id}
    job_id = submit(settings, payload)
    assert worker.run_once()
    j = job(settings, job_id)
    assert j.state == "succeeded", j.error
    with get_sessionmaker(settings.database_url)() as s:
        data = db_tasks.get_version(s, "sent", 1).training["data"]
    assert data["train"]["dataset_id"] == ds.id and data["eval"] is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            single(records=[{"text": "x", "label": "a"}, {"text": "y"}]),
            "train: line 2: field 'label': missing",
        ),
        ({**single(), "train": {"records": None, "dataset_id": "nope"}}, "no dataset with id 'nope'"),
        (single(init_from="missing-task"), "init_from"),
        (single(prefix_length=0), "prefix_length"),
    ],
)
def test_bad_jobs_fail_with_a_clear_error(worker, settings, payload, message):
    job_id = submit(settings, payload)
    assert worker.run_once()
    j = job(settings, job_id)
    assert j.state == "failed" and message in j.error
    with get_sessionmaker(settings.database_url)() as s:
        assert db_tasks.get_task(s, "sent") is None
    assert PromptStore(settings.store_dir).scan() == []


def test_task_type_conflict_fails(worker, settings):
    assert worker.run_once() is False
    submit(settings, single(epochs=1))
    worker.run_once()
    payload = single(epochs=1)
    payload["task_type"] = "token-classification"
    payload["train"] = {"records": [{"tokens": ["a", "b"], "tags": ["O", "B-X"]}]}
    payload["eval"] = None
    job_id = submit(settings, payload)  # queued past the API's check (the task changed type meanwhile)
    worker.run_once()
    j = job(settings, job_id)
    assert j.state == "failed" and "classification" in j.error


def test_multitask_job(worker, settings):
    tasks = [
        {"task": "sent-a", "task_type": "classification", "train": {"records": RECORDS}, "eval": None},
        {
            "task": "sent-b",
            "task_type": "classification",
            "train": {"records": [{**r, "label": r["label"].upper()} for r in RECORDS]},
            "eval": {"records": [{**r, "label": r["label"].upper()} for r in RECORDS[:4]]},
            "labels": ["NEG", "POS"],
        },
    ]
    job_id = submit(
        settings, {"tasks": tasks, "hyperparameters": {**HP, "epochs": 1}, "per_task_epochs": 1}, "multitask"
    )
    assert worker.run_once()
    j = job(settings, job_id)
    assert j.state == "succeeded", j.error
    assert j.result == {"sent-a": 1, "sent-b": 1}
    assert set(j.metrics) == {"sent-a", "sent-b"}
    with get_sessionmaker(settings.database_url)() as s:
        assert db_tasks.get_task(s, "sent-b").labels == ["NEG", "POS"]


def test_multitask_job_publishes_each_task_at_its_own_prefix_length(worker, settings, tiny_backbone):
    """No prefix_length or batch_size given: each task gets its task type's defaults
    (classification 16 slots, batches of 16; token classification 64 slots, batches of 8), reads
    one shared 64-slot prefix, and is served at its length; the task order does not matter."""
    tags = [{"tokens": r["text"].split(), "tags": ["X"] * len(r["text"].split())} for r in RECORDS]
    hp = {k: v for k, v in HP.items() if k not in ("prefix_length", "batch_size", "lr")}
    tasks = [
        {"task": "tags", "task_type": "token-classification", "train": {"records": tags}, "eval": None},
        {"task": "sent", "task_type": "classification", "train": {"records": RECORDS}, "eval": None},
    ]
    job_id = submit(settings, {"tasks": tasks, "hyperparameters": {**hp, "epochs": 1}}, "multitask")
    assert worker.run_once()
    assert job(settings, job_id).state == "succeeded", job(settings, job_id).error
    store = PromptStore(settings.store_dir)
    served = {}
    with get_sessionmaker(settings.database_url)() as s:
        for name in ("sent", "tags"):
            ver = db_tasks.get_version(s, name, 1)
            blob = store.read_version(name, 1, ver.sha256)
            served[name] = load_checkpoint_bytes(blob, tiny_backbone)
            assert parse_header(blob)["training"]["config"]["batch_size"] == {"sent": 16, "tags": 8}[name]
    assert (served["sent"].prefix_length, served["tags"].prefix_length) == (16, 64)
    assert torch.equal(served["sent"].kv, served["tags"].kv[:, :, :16])  # the shared prefix's first slots


def test_cancel_running_job(worker, settings):
    job_id = submit(settings, long_job())
    t = threading.Thread(target=worker.run_once)
    t.start()
    try:
        wait_for(lambda: (job(settings, job_id).progress or {}).get("step", 0) >= 2, 60)
        with get_sessionmaker(settings.database_url)() as s:
            db_jobs.request_cancel(s, job_id)
    finally:
        t.join(60)
    assert not t.is_alive()
    j = job(settings, job_id)
    assert j.state == "cancelled" and j.finished_at is not None
    with get_sessionmaker(settings.database_url)() as s:
        assert db_tasks.get_task(s, "sent") is None
    assert PromptStore(settings.store_dir).scan() == []


def test_stop_event_requeues_current_job(worker, settings):
    job_id = submit(settings, long_job())
    stop = threading.Event()
    t = threading.Thread(target=worker.run_forever, args=(stop,))
    t.start()
    try:
        wait_for(lambda: (job(settings, job_id).progress or {}).get("step", 0) >= 2, 60)
    finally:
        stop.set()
        t.join(60)
    j = job(settings, job_id)
    assert j.state == "queued" and j.worker_id is None and j.attempts == 0


def test_settings_env_roundtrip(settings):
    env = settings_env(settings)
    assert (
        env["PROMPTHUB_EMBEDDED_WORKER"] == "true" and env["PROMPTHUB_DATABASE_URL"] == settings.database_url
    )
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert Settings() == settings
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------ worker processes


@pytest.fixture
def proc_settings(settings, tiny_backbone_dir) -> Settings:
    return settings.model_copy(update={"backbone": str(tiny_backbone_dir)})


def _start_worker_process(settings: Settings) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=process_env(settings),
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _running_job_with_steps(settings: Settings, job_id: str, proc: subprocess.Popen) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"worker exited early ({proc.returncode}):\n{out}")
        j = job(settings, job_id)
        return j.state == "running" and (j.progress or {}).get("step", 0) >= 2

    wait_for(ready, 120, "the worker process to start training")


def test_killed_worker_job_is_recovered(proc_settings, tiny_backbone_dir):
    """SIGKILL a `prompthub worker` mid-job; the next worker re-queues the job at start (its process
    is gone, so there is no need to wait for the heartbeat to go stale) and trains it. The
    on_crash=fail path is covered in test_db.py."""
    settings = proc_settings
    job_id = submit(settings, long_job())
    proc = _start_worker_process(settings)
    try:
        _running_job_with_steps(settings, job_id, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert job(settings, job_id).state == "running"  # left behind by the dead worker

    from app.engine.backbone import load_backbone

    w = Worker(settings, backbone=load_backbone(str(tiny_backbone_dir)))
    assert w.recover() == [job_id]
    j = job(settings, job_id)
    assert j.state == "queued" and j.attempts == 1 and "worker died" in j.progress["message"]
    with get_sessionmaker(settings.database_url)() as s:  # make the retry short
        row = db_jobs.get_job(s, job_id)
        row.payload = single(epochs=1, eval_records=None)
        s.commit()
    assert w.run_once()
    j = job(settings, job_id)
    assert j.state == "succeeded" and j.attempts == 1 and j.result == {"sent": 1}
    assert not any(p.name.endswith(".tmp") for p in Path(settings.store_dir).rglob("*"))


def test_embedded_worker_trains_then_stops_cleanly(proc_settings, monkeypatch):
    """spawn_embedded_worker runs `python -m app.cli worker` with the given settings; it trains a job,
    and stop_embedded_worker (SIGTERM) stops it between two steps with the current job re-queued."""
    monkeypatch.chdir(REPO_ROOT)
    short = submit(proc_settings, single(epochs=1, eval_records=None))
    proc = spawn_embedded_worker(proc_settings)
    try:
        wait_for(lambda: job(proc_settings, short).state not in ("queued", "running"), 120, "the first job")
        j = job(proc_settings, short)
        assert j.state == "succeeded", j.error
        long = submit(proc_settings, long_job(task="other"))
        _running_job_with_steps(proc_settings, long, proc)
    finally:
        code = stop_embedded_worker(proc, timeout=30)
    assert code == 0
    j = job(proc_settings, long)
    assert j.state == "queued" and j.attempts == 0 and "worker stopped" in j.progress["message"]
    assert stop_embedded_worker(None) is None


@pytest.mark.postgres
def test_train_job_on_postgres(pg_url, tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setattr(worker_mod, "load_backbone", lambda name, device="cpu": tiny_backbone)
    settings = Settings(database_url=pg_url, store_dir=str(tmp_path / "store"), job_heartbeat_s=0.1)
    job_id = submit(settings, single(epochs=1))
    w = Worker(settings)
    assert w.run_once() and not w.run_once()
    j = job(settings, job_id)
    assert j.state == "succeeded", j.error
    with get_sessionmaker(pg_url)() as s:
        ver = db_tasks.get_active_version(s, "sent")
        assert ver.version == 1 and ver.source == f"job:{job_id}"
    assert PromptStore(settings.store_dir).read_version("sent", 1, ver.sha256)


def test_a_task_deleted_while_its_job_trains_does_not_come_back(worker, settings, monkeypatch):
    """DELETE /tasks/<name> while a job trains it: the job ends cancelled, and its publish is
    refused, so the task stays deleted (the delete lands after the last should_stop check)."""
    from app import versions

    sm = get_sessionmaker(settings.database_url)
    store = PromptStore(settings.store_dir)
    first = submit(settings, single(epochs=1))
    assert worker.run_once() and job(settings, first).state == "succeeded"
    real_train = worker_mod.train_task

    def train_then_delete(*args, **kw):
        result = real_train(*args, **kw)
        with sm() as s:
            versions.delete_task(s, store, "sent")
        return result

    monkeypatch.setattr(worker_mod, "train_task", train_then_delete)
    second = submit(settings, single(epochs=1))
    assert worker.run_once()
    j = job(settings, second)
    assert j.state == "cancelled", (j.state, j.error)
    with sm() as s:
        assert db_tasks.get_task(s, "sent") is None
    assert store.scan() == []


def _dataset(settings: Settings, path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with get_sessionmaker(settings.database_url)() as s:
        return db_datasets.create_dataset(
            s,
            filename=path.name,
            task_type="classification",
            rows=len(rows),
            columns=["text", "label"],
            path=str(path),
            sha256="ab" * 32,
            size_bytes=path.stat().st_size,
        ).id


def _limited_worker(settings: Settings, tiny_backbone, **limits) -> Worker:
    return Worker(settings.model_copy(update=limits), worker_id="limited", backbone=tiny_backbone)


def test_a_dataset_job_over_the_label_cap_fails(settings, tiny_backbone, tmp_path):
    """The API cannot count the labels of an uploaded file: the worker checks the cap when it reads it."""
    rows = [{"text": f"example {i}", "label": f"l{i}"} for i in range(6)]
    payload = single(eval_records=None, epochs=1)
    payload["train"] = {"records": None, "dataset_id": _dataset(settings, tmp_path / "many.jsonl", rows)}
    job_id = submit(settings, payload)
    assert _limited_worker(settings, tiny_backbone, max_labels=5).run_once()
    j = job(settings, job_id)
    assert j.state == "failed" and "6 labels: a task may have at most 5" in j.error
    assert PromptStore(settings.store_dir).scan() == []


def test_a_referenced_dataset_is_held_to_the_upload_limits(settings, tiny_backbone, tmp_path):
    """A dataset reference does not bypass the limits: over the byte limit, or over the row limit."""
    ds = _dataset(settings, tmp_path / "big.jsonl", RECORDS * 4)
    payload = single(eval_records=None, epochs=1)
    payload["train"] = {"records": None, "dataset_id": ds}
    size = (tmp_path / "big.jsonl").stat().st_size
    too_big = submit(settings, payload)
    assert _limited_worker(settings, tiny_backbone, max_upload_bytes=size - 1).run_once()
    j = job(settings, too_big)
    assert j.state == "failed" and f"is {size} bytes; the limit is {size - 1} bytes" in j.error
    too_long = submit(settings, payload)
    assert _limited_worker(settings, tiny_backbone, max_dataset_rows=len(RECORDS)).run_once()
    j = job(settings, too_long)
    assert j.state == "failed" and "too many rows" in j.error


def test_a_job_over_its_wall_time_budget_fails_with_that_reason(settings, tiny_backbone):
    job_id = submit(settings, long_job())
    w = _limited_worker(settings, tiny_backbone, job_max_seconds=1.0)
    assert w.run_once()
    j = job(settings, job_id)
    assert j.state == "failed" and "wall-time budget of 1 s (PROMPTHUB_JOB_MAX_SECONDS)" in j.error
    assert (j.finished_at - j.started_at).total_seconds() < 30
    assert PromptStore(settings.store_dir).scan() == []
    assert not tiny_backbone.model.training  # stopped mid-epoch: the shared backbone is back in eval
