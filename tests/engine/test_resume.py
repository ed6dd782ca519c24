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
    assert ck.saves == 3  # steps 3 and 6 of 8, and the end
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


def test_a_finished_run_resumed_from_its_end_state_trains_nothing(tiny_backbone, tmp_path):
    """The state saved at the end lets a job whose worker died while publishing skip training."""
    data = (sentiment(32, 0), sentiment(16, 1))
    cfg = TrainConfig(epochs=2, lr=3e-2, batch_size=16, seed=5, early_stopping_patience=0)
    full = train_task(tiny_backbone, TaskSpec("classification", prefix_length=4), *data, cfg)
    ck = RunCheckpointer(tmp_path / "s", every_s=0)
    train_task(tiny_backbone, TaskSpec("classification", prefix_length=4), *data, cfg, checkpointer=ck)
    seen = []
    again = RunCheckpointer(tmp_path / "s", every_s=0)
    result = train_task(
        tiny_backbone,
        TaskSpec("classification", prefix_length=4),
        *data,
        cfg,
        checkpointer=again,
        progress=seen.append,
    )
    assert again.resumed_step == full.steps and [p.message for p in seen] == [
        f"resumed from step {full.steps}"
    ]
    _same(full, result)


def test_a_resumed_multitask_job_equals_an_uninterrupted_one(tiny_backbone, tmp_path):
    """Stopped in the joint stage or in the second task's own stage, a multi-task run resumes from
    the stage it was in and ends with the prefixes and heads of an uninterrupted run."""
    from app.engine.multitask import train_multitask

    cfg = TrainConfig(epochs=2, lr=3e-2, batch_size=16, seed=5, early_stopping_patience=0)

    def tasks():
        return {
            "sent": (TaskSpec("classification", prefix_length=4), sentiment(32, 0), sentiment(8, 1)),
            "tags": (TaskSpec("token-classification", prefix_length=4), tagging(32, 0), tagging(8, 1)),
        }

    full = train_multitask(tiny_backbone, tasks(), cfg, per_task_epochs=1)
    # joint stage: 8 steps; per-task stages: 2 steps each
    for stop_at in (5, 11):
        path = tmp_path / f"mt-{stop_at}.state"
        with pytest.raises(Cancelled):
            train_multitask(
                tiny_backbone,
                tasks(),
                cfg,
                per_task_epochs=1,
                should_stop=_stop_after(stop_at),
                checkpointer=RunCheckpointer(path, every_s=0),
            )
        resumed = train_multitask(
            tiny_backbone, tasks(), cfg, per_task_epochs=1, checkpointer=RunCheckpointer(path, every_s=0)
        )
        for name in ("sent", "tags"):
            _same(full[name], resumed[name])
        RunCheckpointer(path).clear()
        assert not list(tmp_path.glob(f"mt-{stop_at}.state*"))


def test_a_run_resumed_while_annealing_equals_an_uninterrupted_one(tiny_backbone, tmp_path):
    """Stopped inside the annealing that early stopping starts, a run resumes it where it was."""
    data = (sentiment(48, 0), sentiment(16, 1))
    cfg = TrainConfig(epochs=10, lr=1e-6, batch_size=16, seed=5, early_stopping_patience=1, anneal_epochs=2)
    full = train_task(tiny_backbone, TaskSpec("classification", prefix_length=4), *data, cfg)
    assert full.steps < 30  # it annealed and ended early
    ck = RunCheckpointer(tmp_path / "a.state", every_s=0)
    with pytest.raises(Cancelled):
        train_task(
            tiny_backbone,
            TaskSpec("classification", prefix_length=4),
            *data,
            cfg,
            should_stop=_stop_after(full.steps - 2),
            checkpointer=ck,
        )
    resumed = train_task(
        tiny_backbone,
        TaskSpec("classification", prefix_length=4),
        *data,
        cfg,
        checkpointer=RunCheckpointer(tmp_path / "a.state", every_s=0),
    )
    _same(full, resumed)


@pytest.mark.parametrize("stop_at", [4, 11])  # in the held-out run (9 steps), in the refit (12)
def test_a_refit_run_resumed_in_either_stage_equals_an_uninterrupted_one(tiny_backbone, tmp_path, stop_at):
    """The refit is a stage of its own: stopped while choosing the epochs or while refitting, the
    job goes on from where it was (the first stage's end state skips it) and ends the same."""
    data = sentiment(60, 0)
    cfg = TrainConfig(
        epochs=3, lr=3e-2, batch_size=16, seed=5, holdout_fraction=0.2, early_stopping_patience=0
    )

    def spec() -> TaskSpec:
        return TaskSpec("classification", prefix_length=4)

    full = train_task(tiny_backbone, spec(), data, None, cfg)
    assert full.refit is not None
    ck = RunCheckpointer(tmp_path / "job.state", every_s=0)
    with pytest.raises(Cancelled):
        train_task(tiny_backbone, spec(), data, None, cfg, should_stop=_stop_after(stop_at), checkpointer=ck)
    seen = []
    resumed = train_task(
        tiny_backbone,
        spec(),
        data,
        None,
        cfg,
        checkpointer=RunCheckpointer(tmp_path / "job.state", every_s=0),
        progress=seen.append,
    )
    resumed_at = [p for p in seen if "resumed from step" in p.message]
    assert resumed_at[-1].step == stop_at  # one bar over both stages, no step done twice
    _same(full, resumed)
    assert resumed.refit == full.refit
