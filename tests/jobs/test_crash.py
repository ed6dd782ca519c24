"""Crash safety with real processes and SIGKILL: a store writer killed mid-write, and the server and its
training worker killed together mid-training. After each fault no partial file is visible, `doctor
--repair` brings the database and the store into agreement, no job stays stuck running, and only
complete files are served."""

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
from app.db.session import REPO_ROOT, get_sessionmaker, run_migrations
from app.engine.checkpoint import sha256_file
from app.ops.doctor import run_doctor
from app.store import PromptStore
from tests.helpers import (
    children_of,
    free_port,
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


@pytest.mark.slow
def test_sigkill_server_and_worker_mid_training(tmp_path, sqlite_url, tiny_backbone_dir):
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
        job_stale_s=5.0,
    )
    run_migrations(sqlite_url)
    seed_store(settings, tiny_backbone_dir, ["sentiment", "ner", "qa"])
    with get_sessionmaker(sqlite_url)() as s:
        token = keys.create_key(s, name="crash", scopes=["admin"])[1]
    h = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{settings.port}"
    log = tmp_path / "server.log"
    faults = 0

    proc = start_server(settings, log, worker=True)
    try:
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            assert c.post("/predict/sentiment", json={"inputs": ["x"]}).status_code == 200
            body = {
                "task": "trained",
                "task_type": "classification",
                "train": {"records": RECORDS},
                "hyperparameters": {"epochs": 100, "max_steps": 100_000, "batch_size": 4, "max_length": 16},
            }
            r = c.post("/train", json=body)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]

            def training() -> bool:
                j = c.get(f"/jobs/{job_id}").json()
                return j["state"] == "running" and (j["progress"] or {}).get("step", 0) >= 3

            wait_for(training, 120, "training to start")
            statuses = [
                c.post("/predict/ner", json={"inputs": ["Ada lives in Paris"]}).status_code for _ in range(5)
            ]
            assert statuses == [200] * 5
        worker_pids = children_of(proc.pid)
        assert worker_pids, "no embedded worker process"
        for pid in [proc.pid, *worker_pids]:  # kill -9 the server and the worker together
            os.kill(pid, signal.SIGKILL)
            faults += 1
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    wait_for(
        lambda: all(
            not Path(f"/proc/{p}").exists() or "Z" in Path(f"/proc/{p}/stat").read_text().split()[2]
            for p in worker_pids
        ),
        30,
        "the worker to die",
    )

    with get_sessionmaker(sqlite_url)() as s:
        assert db_jobs.get_job(s, job_id).state == "running"  # left behind
    report = run_doctor(settings)
    assert [f.kind for f in report.found if f.problem] == ["stuck_job"], report.text()
    assert run_doctor(settings, repair=True).ok
    with get_sessionmaker(sqlite_url)() as s:
        job = db_jobs.get_job(s, job_id)
        assert job.state == "queued" and job.attempts == 1
        job.payload = {**job.payload, "hyperparameters": {**job.payload["hyperparameters"], "max_steps": 5}}
        s.commit()

    proc = start_server(settings, log, worker=True)  # restart: the job is trained, predictions go on
    try:
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            wait_for(
                lambda: c.get(f"/jobs/{job_id}").json()["state"] == "succeeded", 180, "the re-queued job"
            )
            r = c.post("/predict/trained", json={"inputs": ["great film", "awful film"]})
            assert r.status_code == 200 and r.json()["version"] == 1
            for name in ("sentiment", "ner"):
                assert c.post(f"/predict/{name}", json={"inputs": ["x"]}).status_code == 200
            # kill -9 the server alone while it serves: the embedded worker puts nothing at risk
            proc.send_signal(signal.SIGKILL)
            faults += 1
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    time.sleep(2.0)  # the orphaned embedded worker notices its parent is gone and exits
    final = run_doctor(settings)
    assert final.ok, final.text()
    with get_sessionmaker(sqlite_url)() as s:
        assert db_jobs.job_counts(s)["running"] == 0
    print(f"\nserver/worker faults: {faults} SIGKILLs, job {job_id[:8]} recovered and trained, nothing lost")
