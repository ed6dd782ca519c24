"""Classification: records, encoding (plain and verbalizer), head, loss, decoding, metrics."""

from __future__ import annotations

import pytest
import torch

from app.engine import tasks
from app.engine.data import DataError, parse_record
from app.engine.model import SpecError, TaskSpec
from app.engine.tasks.classification import ClassificationExample, encode_classification
from tests.helpers import bad_record_at_line_4

CLS = "classification"
TT = tasks.get(CLS)


@pytest.mark.parametrize(
    ("record", "field", "needle"),
    [
        ({"label": "x"}, "text", "missing"),
        ({"text": "a"}, "label", "missing"),
        ({"text": 5, "label": "x"}, "text", "must be a string"),
        ({"text": "a", "label": 1.5}, "label", "string or an integer"),
        ({"text": "a", "label": True}, "label", "string or an integer"),
        ({"text": "   ", "label": "x"}, "text", "empty"),
        ({"text": "a", "text_pair": 3, "label": "x"}, "text_pair", "string or null"),
    ],
)
def test_bad_records_name_line_and_field(record, field, needle):
    bad_record_at_line_4(CLS, {"text": "fine", "label": "x"}, record, field, needle)


def test_parse_and_labels():
    ex = parse_record({"text": "a", "text_pair": " ", "label": 3}, CLS, line=1)
    assert ex == ClassificationExample("a", None, "3")
    assert parse_record({"text": "a"}, CLS, line=1, require_labels=False).label is None
    assert list(TT.labels_of(ex)) == ["3"] and TT.infer_labels(
        [ex, ClassificationExample("b", label="1")]
    ) == ["1", "3"]
    assert TT.to_input(ClassificationExample("a", "b", "x")) == {"text": "a", "text_pair": "b"}
    assert TT.csv_columns(True) == ("text", "label") and TT.csv_columns(False) == ("text",)


def test_encode_classification(tokenizer):
    examples = [
        ClassificationExample("a good film", None, "pos"),
        ClassificationExample("first part", "second part", "neg"),
        ClassificationExample("no label"),
    ]
    feats = encode_classification(tokenizer, examples, {"neg": 0, "pos": 1}, max_length=32)
    assert [f["label"] for f in feats] == [1, 0, -1]
    expected = tokenizer("first part", "second part")
    assert feats[1]["input_ids"] == expected["input_ids"]
    assert feats[1]["token_type_ids"] == expected["token_type_ids"]
    assert feats[0]["input_ids"][0] == tokenizer.cls_token_id and set(feats[0]["token_type_ids"]) == {0}
    long = [ClassificationExample("word " * 100, "other " * 100, "pos")]
    (f,) = encode_classification(tokenizer, long, None, max_length=20)
    assert len(f["input_ids"]) == 20 and f["label"] == -1
    assert f["token_type_ids"].count(1) in (9, 10)  # longest_first keeps both halves
    with pytest.raises(DataError) as info:
        encode_classification(
            tokenizer, examples[:1] + [ClassificationExample("x", None, "meh")], {"pos": 1}, 16
        )
    assert (info.value.line, info.value.field) == (2, "label")


def test_verbalizer_encoding_puts_the_mask_at_position_1(tokenizer):
    spec = TaskSpec(CLS, labels=["bad", "good"], head="verbalizer")
    (f,) = TT.encode(
        spec, tokenizer, [ClassificationExample("word " * 50, label="good")], {"bad": 0, "good": 1}, 16
    )
    assert len(f["input_ids"]) == 16 and f["input_ids"][1] == tokenizer.mask_token_id and f["label"] == 1
    n, field = TT.input_length(spec, tokenizer, ClassificationExample("a b"))
    assert (n, field) == (len(tokenizer("a b")["input_ids"]) + 1, "text")


def test_spec_rules():
    with pytest.raises(SpecError, match="at least one label") as info:
        TaskSpec(CLS).validate()
    assert info.value.field == "labels"
    TaskSpec(CLS, labels=["a"], head="verbalizer").validate()


def test_head_loss_decode_and_metrics(tiny_backbone):
    spec = TaskSpec(CLS, labels=["neg", "pos"])
    head = TT.build_head(spec, tiny_backbone).eval()
    hidden = torch.randn(3, 5, tiny_backbone.hidden_size)
    logits = head(hidden).detach()
    assert logits.shape == (3, 2)
    targets = TT.targets([{"label": 1}, {"label": 0}, {"label": 1}], 5)
    assert torch.equal(targets["label"], torch.tensor([1, 0, 1]))
    loss = TT.loss(spec, logits, targets)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, targets["label"]))
    out = TT.decode(spec, [None] * 3, [{}] * 3, list(logits))
    probs = torch.softmax(logits, -1)
    for row, p in zip(out, probs, strict=True):
        assert row["label"] == spec.labels[int(p.argmax())] and row["score"] == pytest.approx(float(p.max()))
        assert set(row["scores"]) == {"neg", "pos"}
    examples = [ClassificationExample("x", label=r["label"]) for r in out]
    assert TT.evaluate(spec, examples, [{}] * 3, list(logits)) == {"accuracy": 1.0, "macro_f1": 1.0, "n": 3}
    assert TT.primary_metric(spec) == "accuracy"
    lay = TT.head_layout(spec, tiny_backbone)
    assert (lay.weight, lay.outputs, lay.position) == ("classifier.weight", 2, 0)
