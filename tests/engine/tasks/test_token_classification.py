"""Token classification: records, word-piece labels, head, loss, decoding into tags and spans, metrics."""

from __future__ import annotations

import pytest
import torch

from app.engine import tasks
from app.engine.data import DataError, parse_record, parse_records, read_examples_bytes
from app.engine.model import SpecError, TaskSpec
from app.engine.tasks.spans import decode_bio, spans_with_offsets, split_words
from app.engine.tasks.token_classification import IGNORE_INDEX, TokenExample, encode_tokens
from tests.helpers import bad_record_at_line_4, jsonl, raises_at

TOK = "token-classification"
TT = tasks.get(TOK)


@pytest.mark.parametrize(
    ("record", "field", "needle"),
    [
        ({"tags": ["O"]}, "tokens", "missing"),
        ({"tokens": "a b", "tags": ["O"]}, "tokens", "list of strings"),
        ({"tokens": ["a", 1], "tags": ["O", "O"]}, "tokens", "item 1"),
        ({"tokens": ["a", " "], "tags": ["O", "O"]}, "tokens", "item 1"),
        ({"tokens": ["a", "b"], "tags": ["O"]}, "tags", "1 tags but there are 2 tokens"),
        ({"tokens": ["a"]}, "tags", "missing"),
        ({"tokens": ["a", "b"], "text": "a c", "tags": ["O", "O"]}, "tokens", "do not match"),
    ],
)
def test_bad_records_name_line_and_field(record, field, needle):
    bad_record_at_line_4(TOK, {"tokens": ["fine"], "tags": ["O"]}, record, field, needle)


def test_token_records_and_prediction_text():
    (ex,) = parse_records([{"tokens": ["New", "York"], "tags": ["B-LOC", "I-LOC"]}], TOK)
    assert ex == TokenExample(["New", "York"], ["B-LOC", "I-LOC"])
    ex = parse_record({"text": "Hi, Ann-Marie!"}, TOK, line=1, require_labels=False)
    assert ex.tokens == ["Hi", ",", "Ann", "-", "Marie", "!"]
    assert ex.offsets == [(0, 2), (2, 3), (4, 7), (7, 8), (8, 13), (13, 14)]
    assert ex.tags is None and ex.text == "Hi, Ann-Marie!"
    ex = parse_record(
        {"tokens": ["New", "York", "!"], "text": "New  York!"}, TOK, line=1, require_labels=False
    )
    assert ex.offsets == [(0, 3), (5, 9), (9, 10)]
    assert split_words("  a_b  ") == (["a", "_", "b"], [(2, 3), (3, 4), (4, 5)])


def test_text_only_token_record_needs_prediction_mode():
    raises_at(jsonl({"text": "a b"}), "d.jsonl", TOK, line=1, field="tokens")
    assert read_examples_bytes(jsonl({"text": "a b"}), "d.jsonl", TOK, require_labels=False)[0].tokens == [
        "a",
        "b",
    ]


def test_csv_does_not_apply():
    assert TT.csv_columns(True) is None
    raises_at(b"tokens,tags\na,O\n", "d.csv", TOK, line=None, field=None)
    assert read_examples_bytes(jsonl({"tokens": ["a"], "tags": ["O"]}), "d.jsonl", TOK)[0].tags == ["O"]


def test_encode_tokens_labels_on_first_piece(tokenizer):
    label2id = {"O": 0, "B-PER": 1, "I-PER": 2}
    ex = TokenExample(["Arnold", "Schwarzenegger", "smiled"], ["B-PER", "I-PER", "O"])
    (f,) = encode_tokens(tokenizer, [ex], label2id, max_length=32)
    pieces = tokenizer.convert_ids_to_tokens(f["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert f["word_ids"][0] is None and f["word_ids"][-1] is None
    assert f["word_ids"].count(1) > 1  # the surname is split into several pieces
    for i, (w, lab) in enumerate(zip(f["word_ids"], f["labels"], strict=True)):
        if w is None or (i > 0 and f["word_ids"][i - 1] == w):
            assert lab == IGNORE_INDEX
        else:
            assert lab == label2id[ex.tags[w]]
    assert [lab for lab in f["labels"] if lab != IGNORE_INDEX] == [1, 2, 0]
    assert (f["n_words_kept"], f["n_words"]) == (3, 3)
    assert len(f["input_ids"]) == len(f["token_type_ids"]) == len(f["labels"]) == len(f["word_ids"])

    # truncation: only the first words survive
    (f,) = encode_tokens(tokenizer, [ex], label2id, max_length=4)
    assert len(f["input_ids"]) == 4 and f["n_words_kept"] == 2
    # no tags (prediction) -> all labels ignored; unknown tag -> DataError
    (f,) = encode_tokens(tokenizer, [TokenExample(["hello"])], label2id, 8)
    assert set(f["labels"]) == {IGNORE_INDEX}
    with pytest.raises(DataError) as info:
        encode_tokens(tokenizer, [ex, TokenExample(["x"], ["B-LOC"])], label2id, 8)
    assert (info.value.line, info.value.field) == (2, "tags")


def test_encode_tokens_word_without_pieces_gets_unk(tokenizer):
    (f,) = encode_tokens(
        tokenizer, [TokenExample(["a", "\u200b", "b"], ["O", "B-X", "O"])], {"O": 0, "B-X": 1}, 16
    )
    assert f["word_ids"] == [None, 0, 1, 2, None]
    assert f["input_ids"][2] == tokenizer.unk_token_id
    assert f["labels"] == [IGNORE_INDEX, 0, 1, 0, IGNORE_INDEX]


@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
        (["O", "I-PER", "I-PER", "O"], [("PER", 1, 2)]),  # stray I- starts an entity
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # type change
        (["I-MISC", "B-MISC", "I-MISC"], [("MISC", 0, 0), ("MISC", 1, 2)]),
        (["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"], [("PER", 0, 0), ("LOC", 1, 3)]),
        (["B-LOC", "E-LOC", "E-LOC"], [("LOC", 0, 1), ("LOC", 2, 2)]),
        (["PER", "PER", "O", "LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),  # plain tags
        (["O", "O"], []),
        ([], []),
        (["B-PER"], [("PER", 0, 0)]),
    ],
)
def test_decode_bio(tags, spans):
    assert decode_bio(tags) == spans


def test_spans_with_offsets():
    text = "Angela Merkel visited New York City."
    words, offsets = split_words(text)
    assert words == ["Angela", "Merkel", "visited", "New", "York", "City", "."]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"]
    assert spans_with_offsets(tags, offsets, text) == [
        {"type": "PER", "start": 0, "end": 13, "text": "Angela Merkel"},
        {"type": "LOC", "start": 22, "end": 35, "text": "New York City"},
    ]
    # tags cut short by truncation are fine
    assert spans_with_offsets(tags[:4], offsets, text)[1]["text"] == "New"
    with pytest.raises(ValueError):
        spans_with_offsets(tags + ["O"], offsets, text)


def test_spec_rules():
    with pytest.raises(SpecError, match="at least one label"):
        TaskSpec(TOK).validate()
    with pytest.raises(SpecError, match="verbalizer") as info:
        TaskSpec(TOK, labels=["O"], head="verbalizer").validate()
    assert info.value.field == "head"


def test_head_loss_decode_and_metrics(tiny_backbone, tokenizer):
    spec = TaskSpec(TOK, labels=["B-PER", "I-PER", "O"])
    label2id = {lab: i for i, lab in enumerate(spec.labels)}
    examples = [TokenExample(["Ann", "Lee", "smiled"], ["B-PER", "I-PER", "O"]), TokenExample(["hi"], ["O"])]
    feats = TT.encode(spec, tokenizer, examples, label2id, 32)
    length = max(len(f["input_ids"]) for f in feats)
    targets = TT.targets(feats, length)
    assert targets["labels"].shape == (2, length) and targets["labels"][1, -1] == IGNORE_INDEX
    head = TT.build_head(spec, tiny_backbone).eval()
    logits = head(torch.randn(2, length, tiny_backbone.hidden_size))
    assert logits.shape == (2, length, 3)
    loss = TT.loss(spec, logits, targets)
    mask = targets["labels"] != IGNORE_INDEX
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits[mask], targets["labels"][mask]))
    # logits that pick each word's gold tag at its first piece decode to the gold tags and spans
    gold = torch.full((2, length, 3), -5.0)
    for i, f in enumerate(feats):
        for pos, lab in enumerate(f["labels"]):
            if lab != IGNORE_INDEX:
                gold[i, pos, lab] = 5.0
    out = TT.decode(spec, examples, feats, list(gold))
    assert out[0]["tags"] == ["B-PER", "I-PER", "O"] and out[0]["truncated"] is False
    assert out[0]["entities"] == [{"type": "PER", "start": 0, "end": 7, "text": "Ann Lee"}]
    assert len(out[0]["scores"]) == 3 and all(p > 0.99 for p in out[0]["scores"])  # each word's tag
    assert out[0]["offsets"][:2] == [[0, 3], [4, 7]]
    result = TT.evaluate(spec, examples, feats, list(gold))
    assert result == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "token_accuracy": 1.0, "n": 2}
    assert TT.primary_metric(spec) == "f1"
    assert TT.primary_metric(TaskSpec(TOK, labels=["NOUN", "VERB"])) == "token_accuracy"
    assert TT.input_length(spec, tokenizer, examples[0])[1] == "tokens"
