"""Crash safety with real processes and SIGKILL: a store writer killed mid-write (doctor repairs it),
and the server and its real training worker (app.jobs.worker, started by the server) killed together
during training and during publish, on SQLite and PostgreSQL. After a restart the server recovers on
its own (no doctor, no edits to the database): the job is re-queued and finished, nothing partial or
orphaned is served, nothing is lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.db import jobs as db_jobs
from app.db import keys
from app.db import tasks as db_tasks
from app.db.session import REPO_ROOT, get_sessionmaker
from app.engine.checkpoint import sha256_file
from app.ops.doctor import run_doctor
from app.store import PromptStore
from tests.helpers import (
    children_of,
    free_port,
    get_job,
    process_env,
    seed_store,
    session_for,
    start_server,
    wait_for,
    wait_ready,
)

WRITER = r"""
import sys
from app import versions
from app.db import tasks as db_tasks
from app.db.session import get_sessionmaker
from app.store import PromptStore

root, url, blob_path = sys.argv[1:4]
store, maker = PromptStore(root), get_sessionmaker(url)
blob = open(blob_path, "rb").read()
while True:
    with maker() as s:
        v = versions.publish(s, store, "big", blob, source="crash-test").version
        if v > 2:  # keep the disk bounded: the row first, then the file (as DELETE /tasks does)
            old = v - 2
            if db_tasks.get_version(s, "big", old) is not None:
                db_tasks.delete_version(s, "big", old)
            store.delete_version("big", old)
    print(v, flush=True)
"""


def _big_checkpoint(hub, pad_mb: int) -> bytes:
    """A valid checkpoint of the hub's backbone, padded with an extra tensor to make writes slow."""
    import torch
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from app.engine.checkpoint import checkpoint_bytes
    from tests.helpers import make_serving_task

    small = checkpoint_bytes(make_serving_task(hub.backbone), hub.backbone, {"source": "crash-test"})
    import struct

    (n,) = struct.unpack("<Q", small[:8])
    meta = json.loads(small[8 : 8 + n])["__metadata__"]
    tensors = st_load(small)
    tensors["pad.bytes"] = torch.randint(0, 255, (pad_mb * 1024 * 1024,), dtype=torch.uint8)
    return st_save(tensors, metadata=meta)


@pytest.mark.slow  # 18-45 s on the shared machine
def test_sigkill_during_store_writes(hub, settings, tmp_path):
    """Kill -9 a process that writes 16 MiB checkpoints (file, sidecar, row, delete of an old one) in a
    loop, 6 times at random moments; restart it each time. No partial file is ever visible; doctor
    repairs what the kills left; the active version loads."""
    blob = _big_checkpoint(hub, pad_mb=16)
    blob_path = tmp_path / "blob.safetensors"
    blob_path.write_bytes(blob)
    want_sha = sha256_file(blob_path)
    store = PromptStore(settings.store_dir)
    rng = random.Random(1234)
    kills = temp_seen = 0
    for _round in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, settings.store_dir, settings.database_url, str(blob_path)],
            env=process_env(settings),
            cwd=str(REPO_ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            line = proc.stdout.readline()  # at least one version written by this process
            assert line.strip(), proc.stderr.read().decode()[-3000:]
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        kills += 1
        # what a reader can see: only whole files
        for entry in store.scan(verify=True):
            assert entry.size_bytes == len(blob) and entry.sha256 == want_sha, entry
        temp_seen += sum(1 for p in Path(settings.store_dir).rglob(".*.tmp"))
        report = run_doctor(settings, repair=True, temp_age_s=0)
        assert report.ok, report.text()
        assert run_doctor(settings, temp_age_s=0).ok
        assert not list(Path(settings.store_dir).rglob(".*.tmp"))
        resolved = hub.resolve("big")  # the active version loads (sha256 checked) and is served
        assert resolved.sha256 == want_sha
    with session_for(hub.settings) as s:
        rows = db_tasks.get_versions(s, "big")
    assert rows and all(store.path("big", r.version).is_file() for r in rows)
    print(
        f"\nstore-write faults: {kills} SIGKILLs, {temp_seen} temp files left and cleaned, 0 partial files seen"
    )


# ------------------------------------------------------------------------------ server + worker


RECORDS = [
    {"text": f"{w} film number {i}", "label": lab}
    for i in range(8)
    for w, lab in (("great", "pos"), ("awful", "neg"))
]


def _crash_settings(tmp_path, url: str, backbone_dir: Path, **kw) -> Settings:
    return Settings(
        database_url=url,
        store_dir=str(tmp_path / "store"),
        data_dir=str(tmp_path / "data"),
        backbone=str(backbone_dir),
        port=free_port(),
        auth="required",
        embedded_worker=True,
        worker_poll_s=0.1,
        job_heartbeat_s=0.2,
        job_stale_s=5.0,
        **kw,
    )


def _kill_server_and_worker(proc: subprocess.Popen) -> int:
    """kill -9 the server and its embedded worker together; returns how many processes."""
    worker_pids = children_of(proc.pid)
    assert worker_pids, "no embedded worker process"
    for pid in [proc.pid, *worker_pids]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(30)
    wait_for(
        lambda: all(
            not Path(f"/proc/{p}").exists() or "Z" in Path(f"/proc/{p}/stat").read_text().split()[2]
            for p in worker_pids
        ),
        30,
        "the worker to die",
    )
    return 1 + len(worker_pids)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _check_consistent(settings: Settings, c: httpx.Client, name: str, job_id: str) -> int:
    """The job succeeded; the served version is the one it published; every registered version's
    file is complete; no temp files. Returns the served version."""
    job = c.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job
    published = job["result"][name]
    r = c.post(f"/predict/{name}", json={"inputs": ["great film", "awful film"]})
    assert r.status_code == 200 and r.json()["version"] == published, r.text
    store = PromptStore(settings.store_dir)
    with get_sessionmaker(settings.database_url)() as s:
        rows = db_tasks.get_versions(s, name)
        assert db_tasks.get_active_version(s, name).version == published
        assert db_jobs.job_counts(s)["running"] == 0
    for row in rows:
        assert store.path(name, row.version).is_file()
        assert sha256_file(store.path(name, row.version)) == row.sha256
    assert not list(Path(settings.store_dir).rglob(".*.tmp"))
    return published


@pytest.mark.slow  # ~1 min per database: two server starts, two trainings
@pytest.mark.parametrize("which", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_server_and_worker_mid_training(request, which, tmp_path, tiny_backbone_dir):
    url = request.getfixturevalue("sqlite_url" if which == "sqlite" else "pg_url")
    settings = _crash_settings(tmp_path, url, tiny_backbone_dir, fault_step_delay_s=0.01)
    seed_store(settings, tiny_backbone_dir, ["sentiment", "ner", "qa"])
    with get_sessionmaker(url)() as s:
        token = keys.create_key(s, name="crash", scopes=["admin"])[1]
    h = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{settings.port}"
    log = tmp_path / "server.log"

    proc = start_server(settings, log, worker=True)
    try:
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            body = {
                "task": "trained",
                "task_type": "classification",
                "train": {"records": RECORDS},
                # all 300 steps (no early stopping), each at least 10 ms: still training when killed
                "hyperparameters": {
                    "epochs": 100,
                    "max_steps": 300,
                    "batch_size": 4,
                    "max_length": 16,
                    "early_stopping_patience": 0,
                },
            }
            r = c.post("/train", json=body)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]

            def training() -> bool:
                j = c.get(f"/jobs/{job_id}").json()
                return j["state"] == "running" and (j["progress"] or {}).get("step", 0) >= 3

            wait_for(training, 120, "training to start")
        faults = _kill_server_and_worker(proc)
    finally:
        _stop(proc)
    assert get_job(settings, job_id).state == "running"  # left behind by the dead worker

    proc = start_server(settings, log, worker=True)  # restart; nothing else: no doctor, no DB edits
    try:
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            wait_for(
                lambda: c.get(f"/jobs/{job_id}").json()["state"] == "succeeded", 240, "the re-queued job"
            )
            assert c.get(f"/jobs/{job_id}").json()["attempts"] == 1
            version = _check_consistent(settings, c, "trained", job_id)
            assert version == 1  # the killed attempt published nothing
            for name in ("sentiment", "ner"):
                assert c.post(f"/predict/{name}", json={"inputs": ["x"]}).status_code == 200
    finally:
        _stop(proc)
    print(
        f"\n[{which}] mid-training: {faults} SIGKILLs, job {job_id[:8]} re-queued and trained, nothing lost"
    )


@pytest.mark.slow
@pytest.mark.parametrize("which", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_server_and_worker_during_publish(request, which, tmp_path, tiny_backbone_dir):
    """The worker is paused (app.faults, a test-only setting) inside versions.publish after the
    version file is written and before its row is committed, and killed there with the server."""
    url = request.getfixturevalue("sqlite_url" if which == "sqlite" else "pg_url")
    pause_file = tmp_path / "paused.pid"
    settings = _crash_settings(
        tmp_path, url, tiny_backbone_dir, fault_pause="publish:file-written", fault_pause_file=str(pause_file)
    )
    seed_store(settings, tiny_backbone_dir, ["sentiment"])
    with get_sessionmaker(url)() as s:
        token = keys.create_key(s, name="crash", scopes=["admin"])[1]
    h = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{settings.port}"
    log = tmp_path / "server.log"
    store = PromptStore(settings.store_dir)

    proc = start_server(settings, log, worker=True)
    try:
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            body = {
                "task": "published",
                "task_type": "classification",
                "train": {"records": RECORDS},
                "hyperparameters": {"epochs": 2, "batch_size": 4, "max_length": 16},
            }
            job_id = c.post("/train", json=body).json()["job_id"]
            wait_for(pause_file.exists, 180, "the worker to reach publish")
        assert store.versions("published") == [1]  # the file is there ...
        with get_sessionmaker(url)() as s:
            assert db_tasks.get_versions(s, "published") == []  # ... its row is not
        faults = _kill_server_and_worker(proc)
    finally:
        _stop(proc)

    restarted = settings.model_copy(update={"fault_pause": None, "fault_pause_file": None})
    proc = start_server(restarted, log, worker=True)
    try:
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            wait_for(
                lambda: c.get(f"/jobs/{job_id}").json()["state"] == "succeeded", 240, "the re-queued job"
            )
            job = c.get(f"/jobs/{job_id}").json()
            assert job["attempts"] == 1
            version = _check_consistent(settings, c, "published", job_id)
    finally:
        _stop(proc)
    with get_sessionmaker(url)() as s:
        rows = {r.version: r.source for r in db_tasks.get_versions(s, "published")}
    print(
        f"\n[{which}] during publish: {faults} SIGKILLs, job {job_id[:8]} re-queued and published v{version}; "
        f"versions {rows}"
    )
