"""Regression: records, encoding, head, loss, decoding, metrics; then end to end on a tiny backbone
(training, evaluation, checkpoint round trip, a mixed batch next to the other task types)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from app.engine import tasks
from app.engine.batch import collate, mixed_forward, task_forward
from app.engine.checkpoint import checkpoint_bytes, load_checkpoint_bytes
from app.engine.data import read_examples_bytes
from app.engine.evaluation import evaluate
from app.engine.heads import ClassificationHead, FrozenHead
from app.engine.model import SpecError, TaskModel, TaskSpec
from app.engine.predict import predict, prepare
from app.engine.tasks.regression import RegressionExample
from app.engine.train import train_task
from app.engine.train_config import TrainConfig
from tests.helpers import bad_record_at_line_4, jsonl, raises_at

REG = "regression"
TT = tasks.get(REG)


@pytest.mark.parametrize(
    ("record", "field", "needle"),
    [
        ({"score": 1.0}, "text", "missing"),
        ({"text": "a"}, "score", "missing"),
        ({"text": "a", "score": True}, "score", "must be a number"),
        ({"text": "a", "score": "high"}, "score", "must be a number"),
        ({"text": "a", "score": [1]}, "score", "must be a number"),
        ({"text": "a", "score": "nan"}, "score", "finite"),
        ({"text": "a", "score": 1e999}, "score", "finite"),
        ({"text": "a", "text_pair": 2, "score": 1}, "text_pair", "string or null"),
    ],
)
def test_bad_records_name_line_and_field(record, field, needle):
    bad_record_at_line_4(REG, {"text": "fine", "score": 0.5}, record, field, needle)


def test_records_jsonl_csv_tsv():
    data = jsonl({"text": "a", "text_pair": "b", "score": 4}, {"text": "c", "score": -0.25})
    assert read_examples_bytes(data, "d.jsonl", REG) == [
        RegressionExample("a", "b", 4.0),
        RegressionExample("c", None, -0.25),
    ]
    assert isinstance(read_examples_bytes(data, "d.jsonl", REG)[0].score, float)
    csv = b"text,text_pair,score\nA man plays,A man is playing,4.8\nsolo,, 0.5 \n"
    assert read_examples_bytes(csv, "d.csv", REG) == [
        RegressionExample("A man plays", "A man is playing", 4.8),
        RegressionExample("solo", None, 0.5),
    ]
    assert read_examples_bytes(b"score\ttext\n1\tx\n", "d.tsv", REG) == [RegressionExample("x", None, 1.0)]
    raises_at(b"text,label\nx,1\n", "d.csv", REG, line=1, field="score")
    assert read_examples_bytes(b"text\nx\n", "d.csv", REG, require_labels=False) == [RegressionExample("x")]
    raises_at(b'{"data": []}', "d.json", REG, line=None, field=None)  # SQuAD format is QA's
    assert TT.infer_labels(read_examples_bytes(data, "d.jsonl", REG)) == []
    assert TT.to_input(RegressionExample("a", "b", 1.0)) == {"text": "a", "text_pair": "b"}


def test_spec_rules():
    TaskSpec(REG).validate()  # no labels: valid
    with pytest.raises(SpecError, match="no labels") as info:
        TaskSpec(REG, labels=["a"]).validate()
    assert info.value.field == "labels"
    with pytest.raises(SpecError, match="verbalizer"):
        TaskSpec(REG, head="verbalizer").validate()


def test_encode_head_loss_decode_metrics(tiny_backbone, tokenizer):
    spec = TaskSpec(REG)
    examples = [RegressionExample("a cat", "a small cat", 4.5), RegressionExample("hello", None, 0.5)]
    feats = TT.encode(spec, tokenizer, examples, {}, 32)
    assert feats[0]["input_ids"] == tokenizer("a cat", "a small cat")["input_ids"]
    assert [f["score"] for f in feats] == [4.5, 0.5]
    assert [f["score"] for f in TT.encode(spec, tokenizer, examples, None, 32)] == [None, None]
    targets = TT.targets(feats, 8)
    assert targets["score"].dtype == torch.float32 and targets["score"].tolist() == [4.5, 0.5]
    head = TT.build_head(spec, tiny_backbone).eval()
    assert isinstance(head, ClassificationHead) and head.classifier.out_features == 1
    with torch.no_grad():
        logits = head(torch.randn(2, 6, tiny_backbone.hidden_size))
    assert logits.shape == (2, 1)
    loss = TT.loss(spec, logits, targets)
    assert loss.item() == pytest.approx(float(((logits.squeeze(-1) - targets["score"]) ** 2).mean()))
    out = TT.decode(spec, examples, feats, list(logits))
    assert out == [
        {"score": pytest.approx(float(logits[0, 0]))},
        {"score": pytest.approx(float(logits[1, 0]))},
    ]
    assert all(isinstance(p["score"], float) for p in out)
    perfect = [torch.tensor([4.5]), torch.tensor([0.5])]
    assert TT.evaluate(spec, examples, feats, perfect) == {
        "pearson": pytest.approx(1.0),
        "spearman": pytest.approx(1.0),
        "mse": 0.0,
        "n": 2,
    }
    assert TT.primary_metric(spec) == "pearson"
    assert TT.input_length(spec, tokenizer, examples[0]) == (len(feats[0]["input_ids"]), "text")


# ---------------------------------------------------------------------------------------- end to end

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "food"]


def similarity(n: int, seed: int) -> list[RegressionExample]:
    """Score = how many of the pair's words are shared (0..3): learnable by a tiny model."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.sample(WORDS, 3)
        shared = rng.randint(0, 3)
        b = a[:shared] + rng.sample([w for w in WORDS if w not in a], 3 - shared)
        out.append(RegressionExample(" ".join(a), " ".join(b), float(shared)))
    return out


@pytest.fixture(scope="module")
def trained(tiny_backbone):
    config = TrainConfig(epochs=2, lr=5e-2, batch_size=8, max_steps=12, seed=1)
    return train_task(
        tiny_backbone, TaskSpec(REG, prefix_length=4), similarity(48, 0), similarity(16, 1), config
    )


def test_trains_evaluates_and_round_trips(tiny_backbone, trained):
    assert trained.steps == 12 and trained.task.spec.labels == []
    losses = [h["loss"] for h in trained.history]
    assert all(math.isfinite(x) for x in losses)
    assert set(trained.metrics) == {"pearson", "spearman", "mse", "n"}
    again = evaluate(tiny_backbone, trained.task, similarity(16, 1))
    assert again == pytest.approx(trained.metrics)
    records = [{"text": "good film", "text_pair": "good food"}, {"text": "bad"}]
    preds = predict(tiny_backbone, trained.task, records)
    assert [set(p) for p in preds] == [{"score"}, {"score"}]
    data = checkpoint_bytes(trained.task, tiny_backbone, {"source": "unit test"})
    for frozen in (False, True):
        loaded = load_checkpoint_bytes(data, tiny_backbone, frozen_head=frozen)
        assert isinstance(loaded.head, FrozenHead) == frozen
        assert loaded.spec.task_type == REG and loaded.spec.labels == []
        assert predict(tiny_backbone, loaded, records) == preds


def test_mixed_batch_with_every_task_type_equals_single_task(tiny_backbone, tokenizer, trained):
    torch.manual_seed(3)
    others = [
        TaskSpec("classification", labels=["a", "b"], prefix_length=6),
        TaskSpec("token-classification", labels=["O", "B-X"], prefix_length=3),
        TaskSpec("question-answering", prefix_length=5),
        TaskSpec("classification", labels=["p", "q"], method="prompt-tuning", prefix_length=4),
    ]
    served = []
    for s in others:
        m = TaskModel(s, tiny_backbone)
        if m.prefix is not None:
            with torch.no_grad():
                m.prefix.weight.normal_()
        served.append(
            load_checkpoint_bytes(
                checkpoint_bytes(m.eval().to_serving(), tiny_backbone), tiny_backbone, frozen_head=True
            )
        )
    reg = load_checkpoint_bytes(
        checkpoint_bytes(trained.task, tiny_backbone), tiny_backbone, frozen_head=True
    )
    inputs = [
        (reg, {"text": "good film", "text_pair": "the film was good"}),
        (served[0], {"text": "a much longer sentence with several words"}),
        (served[1], {"tokens": ["Ann", "ate", "food"]}),
        (reg, {"text": "awful"}),
        (served[2], {"question": "what?", "context": "the film was fine"}),
        (served[3], {"text": "short"}),
    ]
    feats = [prepare(t, tokenizer, [r]).features[0] for t, r in inputs]
    rows = mixed_forward(tiny_backbone, [t for t, _ in inputs], collate(feats, tokenizer.pad_token_id))
    for (task, _), f, row in zip(inputs, feats, rows, strict=True):
        single = task_forward(task, tiny_backbone, collate([f], tokenizer.pad_token_id))[0]
        n = len(f["input_ids"])
        got = row[:n] if row.dim() == 2 else row
        torch.testing.assert_close(got, single, atol=1e-4, rtol=1e-4)
    assert rows[0].shape == (1,) and rows[3].shape == (1,)
