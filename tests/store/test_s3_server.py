"""Real processes on the S3 store: `prompthub serve` (and the embedded worker process it spawns)
configured only by PROMPTHUB_STORE_URL and the AWS settings in the environment, against moto_server
over HTTP; then a second server on a new node (empty cache) on the same database and bucket."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.db import tasks as db_tasks
from app.store.s3_objects import parse_store_url
from tests.helpers import free_port, seed_store, session_for, start_server, stop_server, wait_for, wait_ready

RECORDS = [{"text": t, "label": lab} for t, lab in [("great film", "pos"), ("loved it", "pos"),
           ("a fine story", "pos"), ("brilliant", "pos"), ("dull", "neg"), ("a mess", "neg"),
           ("hated it", "neg"), ("terrible", "neg")]]  # fmt: skip


def _node(tmp_path: Path, store_url: str, backbone_dir: Path, node: str, *, worker: bool) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'hub.db'}",
        store_url=store_url,
        store_cache_dir=str(tmp_path / f"cache-{node}"),
        store_dir=str(tmp_path / f"unused-store-{node}"),
        data_dir=str(tmp_path / f"unused-data-{node}"),
        backbone=str(backbone_dir),
        embedded_worker=worker,
        worker_poll_s=0.2,
        port=free_port(),
    )


def _rows(settings: Settings) -> dict[str, tuple[int | None, list[int]]]:
    with session_for(settings) as s:
        return {
            t.name: (t.active_version, [v.version for v in db_tasks.get_versions(s, t.name)])
            for t in db_tasks.list_tasks(s)
        }


@pytest.mark.slow  # two server starts and a training job: ~1-2 min on the shared machine
def test_servers_and_worker_processes_on_s3(s3_server, s3_url, tmp_path, tiny_backbone_dir):
    a = _node(tmp_path, s3_url, tiny_backbone_dir, "a", worker=True)
    seed_store(a, tiny_backbone_dir, ["sentiment"])  # objects only: the start-up registers them
    log = tmp_path / "server-a.log"
    proc = start_server(a, log, worker=True)
    try:
        base = f"http://127.0.0.1:{a.port}"
        wait_ready(base, proc, log)
        with httpx.Client(base_url=base, timeout=60) as c:
            assert c.post("/predict/sentiment", json={"inputs": ["x"]}).status_code == 200
            data = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()
            r = c.post("/datasets", files={"file": ("r.jsonl", io.BytesIO(data))})
            assert r.status_code == 201, r.text
            body = {
                "task": "trained",
                "task_type": "classification",
                "train": {"dataset_id": r.json()["id"]},
                "hyperparameters": {"epochs": 2, "batch_size": 4, "max_length": 16, "prefix_length": 4},
            }
            r = c.post("/train", json=body)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            wait_for(lambda: c.get(f"/jobs/{job_id}").json()["state"] in ("succeeded", "failed"), 240, "job")
            assert c.get(f"/jobs/{job_id}").json()["state"] == "succeeded", c.get(f"/jobs/{job_id}").text
            assert c.post("/predict/trained", json={"inputs": ["x"]}).json()["version"] == 1
    finally:
        stop_server(proc)
    assert not Path(a.store_dir).exists() and not Path(a.data_dir).exists()
    _, prefix = parse_store_url(s3_url)
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/")
    keys = {o["Key"][len(prefix) + 1 :] for o in listed["Contents"]}
    assert {"sentiment/v0001.safetensors", "trained/v0001.safetensors", "trained/v0001.json"} <= keys
    assert any(k.startswith("datasets/") for k in keys)
    before = _rows(a)
    assert before == {"sentiment": (1, [1]), "trained": (1, [1])}

    b = _node(tmp_path, s3_url, tiny_backbone_dir, "b", worker=False)  # a new node: empty cache
    log = tmp_path / "server-b.log"
    proc = start_server(b, log, worker=False)
    try:
        base = f"http://127.0.0.1:{b.port}"
        wait_ready(base, proc, log)
        assert _rows(b) == before
        with httpx.Client(base_url=base, timeout=60) as c:
            for name in ("sentiment", "trained"):
                r = c.post(f"/predict/{name}", json={"inputs": ["x"]})
                assert r.status_code == 200 and r.json()["version"] == 1, r.text
    finally:
        stop_server(proc)
    assert len(list(Path(b.store_cache_dir).rglob("*.safetensors"))) == 2
