"""Reading files and records: formats, line numbers, limits, columns (task types: tests/engine/tasks/)."""

from __future__ import annotations

import json
import pickle

import pytest

from app.engine.data import (
    DataError,
    detect_columns,
    label_list,
    parse_records,
    read_examples,
    read_examples_bytes,
)
from app.engine.tasks.classification import ClassificationExample
from app.engine.tasks.question_answering import QAExample
from app.engine.tasks.token_classification import TokenExample
from tests.helpers import jsonl, raises_at

CLS, TOK, QA, REG = "classification", "token-classification", "question-answering", "regression"


def test_data_error_message_and_pickle():
    err = DataError("missing", line=7, field="label")
    assert str(err) == "line 7: field 'label': missing"
    assert (err.line, err.field, err.message) == (7, "label", "missing")
    assert isinstance(err, ValueError)
    assert str(DataError("oops", line=3)) == "line 3: oops"
    assert str(DataError("oops")) == "oops"
    back = pickle.loads(pickle.dumps(err))
    assert (back.line, back.field, back.message, str(back)) == (7, "label", "missing", str(err))


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


def test_bad_json_line():
    data = jsonl({"text": "a", "label": "x"}, "", '{"text": "b", "label": ', {"text": "c", "label": "y"})
    err = raises_at(data, "d.jsonl", CLS, line=3, field=None)
    assert "invalid JSON" in str(err)
    raises_at(b'{"data": [', "d.json", QA, line=1, field=None)
    raises_at(jsonl({"text": "a", "label": "x"}, "[1, 2]"), "d.jsonl", CLS, line=2, field=None)


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
    with pytest.raises(ValueError, match="unknown task type 'multiple-choice'; expected one of"):
        read_examples_bytes(b"x", "d.jsonl", "multiple-choice")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_examples(empty, CLS)


def test_detect_columns_jsonl():
    data = jsonl({"text": "a", "label": "x"}, "not json", {"text": "b", "text_pair": "c", "label": "y"})
    assert detect_columns(data, "d.jsonl") == ["text", "label", "text_pair"]
    assert detect_columns(b"\xff", "d.jsonl") == []


@pytest.mark.parametrize("separator", ["\u0085", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c"])
def test_jsonl_lines_end_at_newline_only(separator):
    """Valid JSON may hold these inside strings; str.splitlines() would cut the record there."""
    text = f"before{separator}after"
    data = (json.dumps({"text": text, "label": "x"}, ensure_ascii=False) + "\r\n").encode()
    data += jsonl({"text": "b", "label": "y"})
    examples = read_examples_bytes(data, "d.jsonl", CLS)
    assert [ex.text for ex in examples] == [text, "b"]
    assert detect_columns(data, "d.jsonl") == ["text", "label"]
    # line numbers still count "\n" only
    bad = data + jsonl({"text": "c"})
    raises_at(bad, "d.jsonl", CLS, line=3, field="label")


def test_label_list_asks_the_task_type():
    examples = [
        ClassificationExample("a", label="y"),
        ClassificationExample("b", label="x"),
        ClassificationExample("c"),
    ]
    assert label_list(examples) == ["x", "y"]
    assert label_list([TokenExample(["a", "b"], ["O", "B-X"])]) == ["B-X", "O"]
    assert label_list([QAExample("1", "q", "c", [], [])]) == []
    assert label_list(examples, "classification") == ["x", "y"]


def test_data_error_names_the_split():
    err = DataError("bad", line=2, field="label", split="eval")
    assert str(err) == "eval: line 2: field 'label': bad"
    back = pickle.loads(pickle.dumps(err))
    assert (back.split, str(back)) == ("eval", str(err))
