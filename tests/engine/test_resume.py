"""Resumable training: a run stopped between two steps and resumed from its saved state ends
exactly where an uninterrupted run ends (prefix, head, history, best epoch)."""

from __future__ import annotations

import pytest
import torch

from app.engine.model import TaskSpec
from app.engine.resume import RunCheckpointer
from app.engine.train import train_task
from app.engine.train_config import Cancelled, TrainConfig
from tests.engine.test_train import sentiment, tagging


def _same(a, b) -> None:
    assert torch.equal(a.task.kv, b.task.kv)
    sa, sb = a.task.head.state_dict(), b.task.head.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.best_epoch == b.best_epoch and a.steps == b.steps
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.metrics == b.metrics


def _stop_after(n: int):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > n

    return stop


@pytest.mark.parametrize(
    ("task_type", "stop_at", "spec_kw"),
    [
        ("classification", 4, {}),  # mid-epoch (3 steps an epoch)
        ("classification", 6, {"reparameterize": True, "reparam_hidden": 16}),  # at an epoch's end
        ("token-classification", 2, {}),
    ],
)
def test_resumed_run_equals_an_uninterrupted_one(tiny_backbone, tmp_path, task_type, stop_at, spec_kw):
    data = (
        (sentiment(48, 0), sentiment(16, 1))
        if task_type == "classification"
        else (tagging(48, 0), tagging(16, 1))
    )
    cfg = TrainConfig(epochs=3, lr=3e-2, batch_size=16, seed=5, early_stopping_patience=0)

    def spec() -> TaskSpec:
        return TaskSpec(task_type, prefix_length=4, prefix_dropout=0.2, **spec_kw)

    full = train_task(tiny_backbone, spec(), *data, cfg)
    ck = RunCheckpointer(tmp_path / "job.state", every_s=0)
    with pytest.raises(Cancelled):
        train_task(tiny_backbone, spec(), *data, cfg, should_stop=_stop_after(stop_at), checkpointer=ck)
    assert ck.path.is_file() and ck.saves == 1
    seen = []
    ck2 = RunCheckpointer(tmp_path / "job.state", every_s=0)
    resumed = train_task(tiny_backbone, spec(), *data, cfg, checkpointer=ck2, progress=seen.append)
    assert ck2.resumed_step == stop_at
    assert seen[0].message == f"resumed from step {stop_at}"
    assert seen[1].step == stop_at + 1  # no step is done twice
    _same(full, resumed)


def test_periodic_saves_and_a_state_of_another_run_is_ignored(tiny_backbone, tmp_path):
    data = (sentiment(64, 0), sentiment(16, 1))
    cfg = TrainConfig(epochs=2, lr=3e-2, batch_size=16, seed=5, early_stopping_patience=0)
    ck = RunCheckpointer(tmp_path / "s", every_steps=3)
    train_task(tiny_backbone, TaskSpec("classification", prefix_length=4), *data, cfg, checkpointer=ck)
    assert ck.saves == 2  # steps 3 and 6 of 8
    other = TrainConfig(epochs=2, lr=1e-2, batch_size=16, seed=5, early_stopping_patience=0)
    ck2 = RunCheckpointer(tmp_path / "s")
    result = train_task(
        tiny_backbone, TaskSpec("classification", prefix_length=4), *data, other, checkpointer=ck2
    )
    assert ck2.resumed_step is None and result.steps == 8  # started over
    ck2.path.write_bytes(b"torn")
    assert ck2.load({}) is None
    ck2.clear()
    assert not ck2.path.exists()
