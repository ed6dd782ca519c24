"""Training loop: learning, progress, cancellation, reproducibility, multi-task, CLI, real data."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch

from app.engine.evaluation import evaluate
from app.engine.model import TaskSpec
from app.engine.multitask import train_multitask
from app.engine.predict import predict
from app.engine.tasks.classification import ClassificationExample
from app.engine.tasks.question_answering import QAExample
from app.engine.tasks.token_classification import TokenExample
from app.engine.train import train_task
from app.engine.train_config import Cancelled, TrainConfig

POS = ["good", "great", "fine", "nice", "lovely", "superb"]
NEG = ["bad", "awful", "poor", "nasty", "horrid", "dire"]
FILL = ["the", "film", "was", "really", "quite", "food", "service", "day", "and", "it"]


def sentiment(n: int, seed: int) -> list[ClassificationExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pos = rng.random() < 0.5
        words = rng.sample(FILL, 4) + [rng.choice(POS if pos else NEG)]
        rng.shuffle(words)
        out.append(ClassificationExample(" ".join(words), label="pos" if pos else "neg"))
    return out


def tagging(n: int, seed: int) -> list[TokenExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(FILL + POS, 5)
        out.append(TokenExample(words, ["ADJ" if w in POS else "X" for w in words]))
    return out


FAST = TrainConfig(epochs=6, lr=3e-2, batch_size=16, seed=3, early_stopping_patience=0)


def test_prefix_training_reduces_loss_and_reports_progress(tiny_backbone):
    """A random tiny encoder cannot show real learning (the slow MiniLM test does); here the
    loop must lower the loss and report progress and per-epoch evaluation."""
    progress = []
    spec = TaskSpec("classification", prefix_length=8)
    result = train_task(
        tiny_backbone, spec, sentiment(160, 0), sentiment(80, 1), FAST, progress=progress.append
    )
    assert spec.labels == ["neg", "pos"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    steps = [p.step for p in progress]
    assert steps == sorted(steps) and steps[-1] == progress[-1].total
    assert any(p.metrics for p in progress)  # evaluation reported every epoch
    assert len(result.history) == FAST.epochs
    assert result.trainable_fraction < 0.2


@pytest.mark.parametrize("method", ["fine-tuning", "p-tuning-v2", "prompt-tuning"])
def test_the_optimizer_gives_the_encoder_its_lr_and_prompts_no_weight_decay(
    tiny_backbone, monkeypatch, method
):
    """The training loop's AdamW groups: a fine-tuned encoder at backbone_lr, the head at lr, no
    weight decay on prefixes, prompts, biases and layer norms."""
    import app.engine.train as T

    seen: list[tuple] = []
    real = T._param_groups

    def spy(models, config):
        groups = real(models, config)
        seen.append((models, groups))
        return groups

    monkeypatch.setattr(T, "_param_groups", spy)
    cfg = TrainConfig(epochs=1, lr=1e-2, backbone_lr=1e-4, batch_size=8, max_steps=1, weight_decay=0.05)
    spec = TaskSpec("classification", method=method, prefix_length=4)
    train_task(tiny_backbone, spec, sentiment(16, 0), None, cfg)
    (models, groups), *_ = seen
    names = {id(p): n for n, p in models[0].named_parameters()}
    # the scheduler has moved each group's "lr" by the end; "initial_lr" is the one it was given
    by_name = {names[id(p)]: (g["initial_lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    head = [v for n, v in by_name.items() if n.startswith("head.") and n.endswith("weight")]
    assert head and all(v == (1e-2, 0.05) for v in head)
    if method == "fine-tuning":
        enc = {v for n, v in by_name.items() if n.startswith("finetuned.") and n.endswith("dense.weight")}
        assert enc == {(1e-4, 0.05)}
        norms = {v for n, v in by_name.items() if n.startswith("finetuned.") and "LayerNorm" in n}
        assert norms == {(1e-4, 0.0)}
    else:
        own = [v for n, v in by_name.items() if n.startswith(("prefix.", "prompt."))]
        assert own and all(v == (1e-2, 0.0) for v in own)


def test_training_is_reproducible(tiny_backbone):
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=8, seed=11, max_steps=5)
    a = train_task(tiny_backbone, TaskSpec("classification", prefix_length=4), sentiment(40, 0), None, cfg)
    b = train_task(tiny_backbone, TaskSpec("classification", prefix_length=4), sentiment(40, 0), None, cfg)
    assert torch.equal(a.task.kv, b.task.kv)


def test_holdout_when_no_eval_data(tiny_backbone):
    from app.engine.train_config import split_holdout

    train, held = split_holdout(sentiment(100, 0), None, 0.1, seed=1)
    assert len(train) == 90 and len(held) == 10
    assert split_holdout(sentiment(100, 0), None, 0.1, seed=1)[1] == held  # seeded
    assert split_holdout(sentiment(10, 0), None, 0.1, seed=1)[1] is None  # too few to hold out
    cfg = TrainConfig(epochs=1, batch_size=16, holdout_fraction=0.2)
    result = train_task(tiny_backbone, TaskSpec("classification"), sentiment(60, 0), None, cfg)
    assert result.metrics["n"] == 12


def test_a_held_out_run_refits_on_all_examples_for_the_epochs_it_chose(tiny_backbone):
    """With a held-out split carved from train, the published model is a second run on all of
    train for the epochs the first one ran: exactly what training on all of it for that many
    epochs gives. Its metrics stay the held-out split's (the refit has no unseen data)."""
    data = sentiment(60, 0)
    spec = lambda: TaskSpec("classification", prefix_length=4)  # noqa: E731
    cfg = TrainConfig(
        epochs=3, lr=3e-2, batch_size=16, seed=5, holdout_fraction=0.2, early_stopping_patience=0
    )
    seen = []
    result = train_task(tiny_backbone, spec(), data, None, cfg, progress=seen.append)
    no_refit = train_task(tiny_backbone, spec(), data, None, replace(cfg, refit=False))
    direct = train_task(tiny_backbone, spec(), data, None, replace(cfg, holdout_fraction=0.0, refit=False))
    assert result.refit == {"epochs": 3, "examples": 60, "held_out": 12}
    assert torch.equal(result.task.kv, direct.task.kv)  # the refit is a plain run on all 60
    assert not torch.equal(result.task.kv, no_refit.task.kv)
    assert result.metrics == no_refit.metrics and result.metrics["n"] == 12  # the held-out split's
    assert result.best_epoch == no_refit.best_epoch
    assert result.steps == no_refit.steps + direct.steps == 9 + 12
    assert [h.get("refit", False) for h in result.history] == [False] * 3 + [True] * 3
    msgs = [p.message for p in seen if p.message]
    assert "refit: 3 epochs on all 60 training examples" in msgs
    steps = [p.step for p in seen]
    assert steps == sorted(steps) and seen[-1].step == seen[-1].total == 21  # one bar, both runs


def test_refit_only_when_a_worthwhile_split_came_out_of_train(tiny_backbone):
    from app.engine.train import refit_applies

    cfg = TrainConfig()
    assert cfg.refit and refit_applies(cfg, 100, 1000) and refit_applies(cfg, 50, 1000)
    assert not refit_applies(cfg, 49, 1000)  # capped split of a large data set: under 5%
    assert not refit_applies(replace(cfg, refit=False), 100, 1000)
    assert not refit_applies(cfg, 0, 1000)
    held = TrainConfig(epochs=1, batch_size=16, holdout_fraction=0.2, early_stopping_patience=0)
    given = train_task(tiny_backbone, TaskSpec("classification"), sentiment(60, 0), sentiment(12, 1), held)
    assert given.refit is None  # eval data given: nothing was held out of train
    tiny = train_task(tiny_backbone, TaskSpec("classification"), sentiment(12, 0), None, held)
    assert tiny.refit is None  # too few examples to hold any out
    empty = train_task(tiny_backbone, TaskSpec("classification"), sentiment(60, 0), [], held)
    assert empty.refit == {"epochs": 1, "examples": 60, "held_out": 12}  # no eval data: [] as None


def test_cancellation_between_steps(tiny_backbone):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled, match="step 3"):
        train_task(
            tiny_backbone,
            TaskSpec("classification"),
            sentiment(64, 0),
            None,
            TrainConfig(batch_size=8),
            should_stop=stop,
        )
    # a run stopped mid-epoch leaves the shared frozen backbone in eval mode (no dropout for the
    # predictions and jobs that use it next)
    assert not tiny_backbone.model.training


def test_early_stopping_and_best_epoch(tiny_backbone):
    cfg = TrainConfig(epochs=8, lr=1e-6, batch_size=16, early_stopping_patience=1)
    result = train_task(tiny_backbone, TaskSpec("classification"), sentiment(48, 0), sentiment(32, 1), cfg)
    assert len(result.history) < 8  # nothing improves at this learning rate, so it stops early
    assert result.best_epoch is not None


@pytest.mark.parametrize("anneal", [0, 2])
def test_early_stopping_anneals_the_learning_rate_before_it_stops(tiny_backbone, anneal):
    """When the held-out score stops improving, the run does not stop at the learning rate's
    height: it decays it linearly to 0 over `anneal_epochs` more epochs, then ends (0: stops at once)."""
    cfg = TrainConfig(epochs=10, lr=1e-6, batch_size=16, early_stopping_patience=1, anneal_epochs=anneal)
    seen = []
    lrs = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **kw)

    torch.optim.AdamW.step = spy
    try:
        result = train_task(
            tiny_backbone,
            TaskSpec("classification"),
            sentiment(48, 0),
            sentiment(32, 1),
            cfg,
            progress=seen.append,
        )
    finally:
        torch.optim.AdamW.step = real_step
    stopped = next(p for p in seen if "annealing" in p.message or p.message == "early stopping")
    epochs_then = int(stopped.epoch)
    assert len(result.history) == epochs_then + anneal < 10  # 3 steps an epoch
    assert result.steps == 3 * (epochs_then + anneal)
    if anneal:
        assert stopped.total == result.steps and seen[-1].total == result.steps
        tail = lrs[-3 * anneal :]  # the annealing steps: down to 0 in a straight line
        assert (
            all(a > b for a, b in zip(tail, tail[1:], strict=False))
            and tail[-1] < lrs[-3 * anneal - 1] / anneal
        )
    else:
        assert stopped.message == "early stopping"


def test_token_classification_and_qa_train_and_predict(tiny_backbone):
    r = train_task(
        tiny_backbone,
        TaskSpec("token-classification", prefix_length=4),
        tagging(120, 0),
        tagging(40, 1),
        FAST,
    )
    assert r.metrics["token_accuracy"] >= 0.75
    preds = predict(tiny_backbone, r.task, [{"tokens": ["the", "good", "day"]}, {"text": "a lovely film"}])
    assert len(preds[0]["tags"]) == 3 and len(preds[1]["tags"]) == 3
    ctx = "The cat sat on the mat while the dog slept."
    qa = [
        QAExample(f"q{i}", "Where did the cat sit?", ctx, ["the mat"], [ctx.index("the mat")])
        for i in range(16)
    ]
    r = train_task(
        tiny_backbone,
        TaskSpec("question-answering", prefix_length=4, max_length=32, doc_stride=8),
        qa,
        qa[:4],
        FAST,
    )
    assert set(r.metrics) >= {"exact_match", "f1"}
    (p,) = predict(tiny_backbone, r.task, [{"question": "Where did the cat sit?", "context": ctx}])
    assert ctx[p["start"] : p["end"]] == p["answer"]


@pytest.mark.parametrize("method", ["prompt-tuning", "fine-tuning"])
def test_baselines_train_through_the_same_loop(tiny_backbone, method):
    cfg = TrainConfig(
        epochs=2, lr=3e-2 if method == "prompt-tuning" else 1e-3, backbone_lr=1e-3, batch_size=16
    )
    r = train_task(
        tiny_backbone,
        TaskSpec("classification", method=method, prefix_length=4),
        sentiment(64, 0),
        sentiment(32, 1),
        cfg,
    )
    assert 0.0 <= r.metrics["accuracy"] <= 1.0
    assert (r.trainable_fraction > 0.9) == (method == "fine-tuning")


def test_multitask_shared_prefix_then_per_task(tiny_backbone):
    tasks = {
        "sent": (TaskSpec("classification", prefix_length=6), sentiment(96, 0), sentiment(32, 1)),
        "tags": (TaskSpec("token-classification", prefix_length=6), tagging(96, 0), tagging(32, 1)),
    }
    joint = train_multitask(tiny_backbone, tasks, TrainConfig(epochs=2, lr=3e-2, batch_size=16))
    assert torch.equal(joint["sent"].task.kv, joint["tags"].task.kv)  # one shared prefix
    assert set(joint["sent"].history[0]["metrics"]) == {"sent", "tags"}
    tasks2 = {k: (TaskSpec(v[0].task_type, prefix_length=6), v[1], v[2]) for k, v in tasks.items()}
    cont = train_multitask(
        tiny_backbone, tasks2, TrainConfig(epochs=1, lr=3e-2, batch_size=16), per_task_epochs=1
    )
    assert not torch.equal(cont["sent"].task.kv, cont["tags"].task.kv)  # each continued alone


def test_multitask_tasks_keep_their_own_prefix_length(tiny_backbone):
    """A shared prefix as long as the longest task's; a shorter task reads its first slots, in
    training and as served, and continues alone at its own length."""
    tasks = {
        "sent": (TaskSpec("classification", prefix_length=3), sentiment(64, 0), sentiment(16, 1)),
        "tags": (TaskSpec("token-classification", prefix_length=8), tagging(64, 0), tagging(16, 1)),
    }
    joint = train_multitask(tiny_backbone, tasks, TrainConfig(epochs=1, lr=3e-2, batch_size=16))
    sent, tags = joint["sent"].task, joint["tags"].task
    assert (sent.spec.prefix_length, tags.spec.prefix_length) == (3, 8)
    assert (sent.prefix_length, tags.prefix_length) == (3, 8)
    assert torch.equal(sent.kv, tags.kv[:, :, :3])  # the first slots of one shared prefix
    tasks2 = {
        k: (TaskSpec(v[0].task_type, prefix_length=v[0].prefix_length), v[1], v[2]) for k, v in tasks.items()
    }
    cont = train_multitask(
        tiny_backbone, tasks2, TrainConfig(epochs=1, lr=3e-2, batch_size=16), per_task_epochs=1
    )
    assert (cont["sent"].task.prefix_length, cont["tags"].task.prefix_length) == (3, 8)


def test_multitask_tasks_keep_their_own_batch_size_and_per_task_settings(tiny_backbone):
    """With task_configs, the joint stage draws each task's batches at its own batch size, and
    the per-task stage trains each task at its own settings (here: the tags task at lr ~0)."""

    def tasks():
        return {
            "sent": (TaskSpec("classification", prefix_length=4), sentiment(64, 0), sentiment(16, 1)),
            "tags": (TaskSpec("token-classification", prefix_length=4), tagging(64, 0), tagging(16, 1)),
        }

    joint_cfg = TrainConfig(epochs=1, lr=3e-2, batch_size=16, early_stopping_patience=0)
    own = {"sent": joint_cfg, "tags": replace(joint_cfg, batch_size=4, lr=1e-12)}
    events = []
    cont = train_multitask(
        tiny_backbone, tasks(), joint_cfg, progress=events.append, per_task_epochs=1, task_configs=own
    )
    joint_steps = [e for e in events if e.task is not None]
    assert sum(e.task == "sent" for e in joint_steps) == 64 // 16
    assert sum(e.task == "tags" for e in joint_steps) == 64 // 4  # its own batch size
    assert joint_steps[-1].total == 64 // 16 + 64 // 4
    alone = train_multitask(tiny_backbone, tasks(), joint_cfg, task_configs=own)
    # the per-task stage: tags at its own lr (~0) stays where the joint stage left it; sent moves
    assert torch.allclose(cont["tags"].task.kv, alone["tags"].task.kv)
    assert not torch.allclose(cont["sent"].task.kv, alone["sent"].task.kv)


def test_a_task_cannot_read_more_slots_than_a_shared_prefix_has(tiny_backbone):
    from app.engine.model import SpecError, TaskModel, new_prefix_encoder

    shared = new_prefix_encoder(
        TaskSpec("classification", labels=["a", "b"], prefix_length=4).validate(tiny_backbone.num_layers),
        tiny_backbone,
    )
    with pytest.raises(SpecError) as e:
        TaskModel(
            TaskSpec("classification", labels=["a", "b"], prefix_length=6),
            tiny_backbone,
            shared_prefix=shared,
        )
    assert e.value.field == "prefix_length"


def test_continuation_starts_from_the_prefix_and_the_head_of_the_same_task(tiny_backbone):
    first = train_task(
        tiny_backbone, TaskSpec("classification", prefix_length=6), sentiment(64, 0), None, FAST
    )
    still = TrainConfig(epochs=1, lr=1e-12, batch_size=16, seed=3, early_stopping_patience=0)
    # same task (labels neg/pos): prefix and head both carry over (lr ~0 -> unchanged)
    cont = train_task(
        tiny_backbone,
        TaskSpec("classification", prefix_length=6),
        sentiment(32, 2),
        None,
        still,
        init_kv=first.task,
    )
    torch.testing.assert_close(cont.task.kv, first.task.kv)
    for a, b in zip(cont.task.head.state_dict().values(), first.task.head.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    # other labels: only the prefix is a start; the head is new
    other = [
        ClassificationExample(e.text, label={"pos": "yes", "neg": "no"}[e.label]) for e in sentiment(32, 2)
    ]
    fresh = train_task(
        tiny_backbone, TaskSpec("classification", prefix_length=6), other, None, still, init_kv=first.task
    )
    torch.testing.assert_close(fresh.task.kv, first.task.kv)
    assert fresh.task.spec.labels == ["no", "yes"]
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(
            fresh.task.head.state_dict().values(), first.task.head.state_dict().values(), strict=True
        )
    )


def test_cli_train_and_predict(tiny_backbone, tmp_path, capsys):
    from app.cli import main

    bb_dir = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(bb_dir)
    tiny_backbone.tokenizer.save_pretrained(bb_dir)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in sentiment(64, 0)))
    rc = main(
        [
            "train",
            "--task-type",
            "classification",
            "--train",
            str(train),
            "--eval",
            str(train),
            "--out",
            str(tmp_path / "out"),
            "--backbone",
            str(bb_dir),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= summary["metrics"]["accuracy"] <= 1 and summary["trainable_fraction"] < 0.2
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a good day"}\n{"text": "an awful day"}\n')
    rc = main(
        ["predict", "--checkpoint", str(tmp_path / "out"), "--input", str(inputs), "--backbone", str(bb_dir)]
    )
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and all(x["label"] in {"pos", "neg"} for x in lines)


def test_cli_reports_bad_records_with_line_and_field(tmp_path, capsys):
    from app.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "a"}\n{"text": "missing label"}\n')
    rc = main(["train", "--task-type", "classification", "--train", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 65  # a data error, told apart from usage errors (2)
    err = capsys.readouterr().err
    assert "line 2" in err and "label" in err


def test_cli_names_the_file_that_holds_the_bad_record(tmp_path, capsys):
    from app.cli import main

    good = tmp_path / "a.jsonl"
    good.write_text('{"text": "ok", "label": "a"}\n{"text": "fine", "label": "b"}\n')
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "ok", "label": "a"}\n{"text": "missing label"}\n')
    argv = ["train", "--task-type", "classification", "--train", str(good), "--eval", str(bad)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 65
    err = capsys.readouterr().err
    assert f"{bad}: line 2: field 'label'" in err and str(good) not in err


@pytest.mark.slow
def test_minilm_learns_banking77_subset(minilm):
    """Real weights, real data: 10 BANKING77 intents, P-Tuning v2, two short epochs."""
    from app.engine.data import parse_records
    from bench.datasets import load_split, prepare

    prepare("banking77")
    train_all = parse_records(load_split("banking77", "train"), "classification")
    test_all = parse_records(load_split("banking77", "test"), "classification")
    keep = sorted({e.label for e in train_all})[:10]
    train = [e for e in train_all if e.label in keep]
    test = [e for e in test_all if e.label in keep]
    spec = TaskSpec("classification", labels=keep, prefix_length=16, max_length=64)
    result = train_task(minilm, spec, train, None, TrainConfig(epochs=2, lr=1e-2, batch_size=32, seed=0))
    metrics = evaluate(minilm, result.task, test)
    print("banking77-10 held-out", metrics, "train", len(train), "test", len(test))
    assert metrics["accuracy"] >= 0.6  # chance is 0.1
