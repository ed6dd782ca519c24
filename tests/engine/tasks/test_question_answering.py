"""Question answering: records, SQuAD windows, head, loss, answer post-processing, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engine import tasks
from app.engine.model import SpecError, TaskSpec
from app.engine.tasks.question_answering import QAExample, encode_qa, postprocess_qa
from tests.helpers import bad_record_at_line_4

QA = "question-answering"
TT = tasks.get(QA)


@pytest.mark.parametrize(
    ("record", "field", "needle"),
    [
        ({"context": "c", "answers": {"text": [], "answer_start": []}}, "question", "missing"),
        ({"question": "q", "answers": {"text": [], "answer_start": []}}, "context", "missing"),
        ({"question": "q", "context": "c"}, "answers", "missing"),
        ({"question": "q", "context": "abc", "answers": {"text": ["b"]}}, "answers", "answer_start"),
        (
            {"question": "q", "context": "abc", "answers": {"text": ["b"], "answer_start": ["1"]}},
            "answers",
            "integers",
        ),
        (
            {"question": "q", "context": "abc", "answers": {"text": ["b", "c"], "answer_start": [1]}},
            "answers",
            "2 items",
        ),
        (
            {"question": "q", "context": "abc", "answers": {"text": ["b"], "answer_start": [0]}},
            "answers",
            "does not match the context",
        ),
        (
            {"question": "q", "context": "abc", "answers": {"text": ["c"], "answer_start": [9]}},
            "answers",
            "does not match the context",
        ),
        ({"question": "q", "context": "abc", "answers": ["b"]}, "answers", "must be an object"),
        ({"id": [1], "question": "q", "context": "abc"}, "id", "must be a string"),
    ],
)
def test_bad_records_name_line_and_field(record, field, needle):
    good = {"question": "q", "context": "abc", "answers": {"text": ["a"], "answer_start": [0]}}
    bad_record_at_line_4(QA, good, record, field, needle)


def _long_qa_example() -> QAExample:
    filler = " ".join(f"Sentence {i} talks about nothing in particular." for i in range(40))
    context = filler + " The treaty was signed in Westphalia in 1648. " + filler
    answer = "Westphalia in 1648"
    return QAExample(
        "long", "Where and when was the treaty signed?", context, [answer], [context.index(answer)]
    )


def _peaked_logits(features, which):
    """Logits with a peak at each window's gold tokens (and a weak CLS)."""
    starts, ends = [], []
    for f in features:
        s = np.full(len(f["input_ids"]), -5.0)
        e = np.full(len(f["input_ids"]), -5.0)
        s[0] = e[0] = 0.0
        if which(f):
            s[f["start_position"]] = 8.0
            e[f["end_position"]] = 8.0
        starts.append(s)
        ends.append(e)
    return starts, ends


def test_qa_windows_on_long_context(tokenizer):
    ex = _long_qa_example()
    feats = encode_qa(tokenizer, [ex], max_length=96, doc_stride=32)
    assert len(feats) > 4
    assert all(len(f["input_ids"]) <= 96 for f in feats)
    assert all(f["example_index"] == 0 for f in feats)
    hits = [i for i, f in enumerate(feats) if f["start_position"] > 0]
    assert hits and hits[0] > 0  # the answer lies in a later window
    for i in hits:
        f = feats[i]
        s, e = f["offsets"][f["start_position"]], f["offsets"][f["end_position"]]
        assert ex.context[s[0] : e[1]] == "Westphalia in 1648"
    for f in feats:
        q_len = f["token_type_ids"].index(1)
        assert all(off is None for off in f["offsets"][:q_len]) and f["offsets"][-1] is None
        assert all(off is not None for off in f["offsets"][q_len:-1])
        if f["start_position"] == 0:
            assert f["end_position"] == 0
    # consecutive windows overlap by doc_stride tokens
    first_ctx = [off for off in feats[0]["offsets"] if off is not None]
    second_ctx = [off for off in feats[1]["offsets"] if off is not None]
    assert first_ctx[-32:] == second_ctx[:32]

    starts, ends = _peaked_logits(feats, lambda f: f["start_position"] > 0)
    (pred,) = postprocess_qa([ex], feats, starts, ends)
    assert pred["id"] == "long" and pred["text"] == "Westphalia in 1648"
    assert (pred["start"], pred["end"]) == (
        ex.answer_starts[0],
        ex.answer_starts[0] + len("Westphalia in 1648"),
    )
    assert isinstance(pred["score"], float) and 0.9 < pred["score"] <= 1.0
    # the same from a padded 2-D array
    width = max(len(s) for s in starts)
    pad = np.full((len(starts), width), -1e4)
    pad_e = pad.copy()
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        pad[i, : len(s)] = s
        pad_e[i, : len(e)] = e
    assert postprocess_qa([ex], feats, pad, pad_e)[0]["text"] == "Westphalia in 1648"
    # max_answer_length shorter than the answer -> a different (shorter) span
    assert postprocess_qa([ex], feats, starts, ends, max_answer_length=2)[0]["text"] != "Westphalia in 1648"


def test_qa_no_answer(tokenizer):
    ex = _long_qa_example()
    unanswerable = QAExample("none", ex.question, ex.context, [], [])
    feats = encode_qa(tokenizer, [ex, unanswerable], max_length=96, doc_stride=32)
    assert {f["example_index"] for f in feats} == {0, 1}
    assert all(f["start_position"] == f["end_position"] == 0 for f in feats if f["example_index"] == 1)

    starts, ends = _peaked_logits(feats, lambda f: f["start_position"] > 0)
    # example 1: flat logits with a strong CLS in every window
    for i, f in enumerate(feats):
        if f["example_index"] == 1:
            starts[i][0] = ends[i][0] = 6.0
            starts[i][-2] = ends[i][-2] = 1.0  # a context token
    preds = postprocess_qa([ex, unanswerable], feats, starts, ends, allow_no_answer=True)
    assert preds[0]["text"] == "Westphalia in 1648"
    assert preds[1] == {"id": "none", "text": "", "start": -1, "end": -1, "score": preds[1]["score"]}
    assert preds[1]["score"] > 0.5
    # without the option an answer span is always returned
    preds = postprocess_qa([ex, unanswerable], feats, starts, ends)
    assert preds[1]["text"] and preds[1]["start"] >= 0
    # a huge threshold forces an answer even with no-answer allowed
    preds = postprocess_qa(
        [ex, unanswerable], feats, starts, ends, allow_no_answer=True, null_threshold=100.0
    )
    assert preds[1]["text"]


def test_qa_long_question_is_cut_and_bad_stride(tokenizer):
    ex = QAExample("q", "why " * 200, "short context here", [], [])
    feats = encode_qa(tokenizer, [ex], max_length=64, doc_stride=16)
    assert len(feats) == 1 and len(feats[0]["input_ids"]) <= 64
    assert any(off is not None for off in feats[0]["offsets"])
    with pytest.raises(ValueError, match="doc_stride"):
        encode_qa(tokenizer, [ex], max_length=32, doc_stride=30)


def test_spec_rules():
    TaskSpec(QA).validate()  # no labels needed
    with pytest.raises(SpecError, match="doc_stride") as info:
        TaskSpec(QA, doc_stride=128, max_length=128).validate()
    assert info.value.field == "doc_stride"


def test_head_loss_decode_and_metrics(tiny_backbone, tokenizer):
    spec = TaskSpec(QA, max_length=96, doc_stride=32)
    ex = _long_qa_example()
    feats = TT.encode(spec, tokenizer, [ex], None, 96)
    assert len(feats) > 1 and all(len(f["input_ids"]) <= 96 for f in feats)
    length = max(len(f["input_ids"]) for f in feats)
    targets = TT.targets(feats, length)
    assert targets["start_position"].tolist() == [f["start_position"] for f in feats]
    head = TT.build_head(spec, tiny_backbone).eval()
    logits = head(torch.randn(len(feats), length, tiny_backbone.hidden_size))
    assert logits.shape == (len(feats), length, 2)
    batch = {"attention_mask": torch.ones(len(feats), length, dtype=torch.long), **targets}
    assert TT.loss(spec, logits, batch).item() > 0
    starts, ends = _peaked_logits(feats, lambda f: f["start_position"] > 0)
    rows = [torch.tensor(np.stack([s, e], axis=1)) for s, e in zip(starts, ends, strict=True)]
    (pred,) = TT.decode(spec, [ex], feats, rows)
    assert pred["answer"] == "Westphalia in 1648" and pred["id"] == "long"
    assert set(pred) == {"id", "answer", "start", "end", "score"}
    assert TT.evaluate(spec, [ex], feats, rows) == {"exact_match": 100.0, "f1": 100.0, "n": 1}
    assert TT.primary_metric(spec) == "f1"
    assert TT.input_length(spec, tokenizer, ex) is None  # long contexts become windows, never refused
    assert TT.to_input(ex) == {"id": "long", "question": ex.question, "context": ex.context}
