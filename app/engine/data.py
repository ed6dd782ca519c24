"""Data formats, validation, tokenisation, QA windows and decoding for the three task types.

Task types are the strings ``"classification"``, ``"token-classification"`` and
``"question-answering"``.

Record formats (one example per line in JSONL; CSV/TSV with the same columns for classification):

* classification: ``{"text": str, "text_pair"?: str | null, "label": str | int}``.  The label is
  converted to ``str``; it may be absent when ``require_labels=False`` (prediction).
* token-classification: ``{"tokens": [str, ...], "tags": [str, ...]}`` of equal length (tags optional
  for prediction).  For prediction ``{"text": str}`` is accepted too: it is split into words
  (whitespace + punctuation) keeping character offsets.  When both ``tokens`` and ``text`` are given
  the tokens are located in the text to get their offsets.
* question-answering: ``{"id"?: str, "question": str, "context": str,
  "answers": {"text": [...], "answer_start": [...]}}`` (answers optional for prediction; empty lists
  mean "no answer", SQuAD 2.0 style), or SQuAD's own JSON file format.  Every answer must agree with
  the context: ``context[start:start + len(text)] == text``.

Every bad record raises :class:`DataError` naming the 1-based line (record number for JSON files,
physical line for JSONL/CSV/TSV, where a CSV header is line 1) and the offending field.  Nothing is
silently dropped; only blank lines are skipped.

The encoders return lists of plain ``dict`` features made of Python lists (no padding: the model's
collate function pads).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TASK_TYPES = ("classification", "token-classification", "question-answering")

IGNORE_INDEX = -100
"""Label id for word pieces that carry no label (continuation pieces, special tokens)."""

_TEXT_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".tsv"}
_WORD_RE = re.compile(r"[^\W_]+|\S")
_ENCODE_CHUNK = 1000


# --------------------------------------------------------------------------------------------------
# Errors and example types
# --------------------------------------------------------------------------------------------------


class DataError(ValueError):
    """A data problem, located by 1-based ``line`` and ``field`` where known.

    ``str(err)`` reads like ``"line 7: field 'label': missing"``.
    """

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        self.message = message
        self.line = line
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make_data_error, (self.message, self.line, self.field))


def _make_data_error(message: str, line: int | None, field: str | None) -> DataError:
    return DataError(message, line=line, field=field)


@dataclass
class ClassificationExample:
    text: str
    text_pair: str | None = None
    label: str | None = None


@dataclass
class TokenExample:
    tokens: list[str]
    tags: list[str] | None = None
    offsets: list[tuple[int, int]] | None = None
    text: str | None = None


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]


Example = ClassificationExample | TokenExample | QAExample


def check_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    return task_type


# --------------------------------------------------------------------------------------------------
# Word splitting
# --------------------------------------------------------------------------------------------------


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split ``text`` into words on whitespace and punctuation, keeping ``(start, end)`` char offsets.

    Runs of letters/digits form one word; every other non-space character is a word of its own.
    """
    words: list[str] = []
    offsets: list[tuple[int, int]] = []
    for match in _WORD_RE.finditer(text):
        words.append(match.group())
        offsets.append((match.start(), match.end()))
    return words, offsets


def _locate_tokens(tokens: Sequence[str], text: str) -> list[tuple[int, int]] | None:
    """Find each token in ``text`` in order; ``None`` when one cannot be found."""
    offsets: list[tuple[int, int]] = []
    pos = 0
    for token in tokens:
        start = text.find(token, pos)
        if start < 0 or text[pos:start].strip():
            return None
        pos = start + len(token)
        offsets.append((start, pos))
    return offsets


# --------------------------------------------------------------------------------------------------
# Record parsing
# --------------------------------------------------------------------------------------------------


def _require_str(record: dict, field: str, line: int, *, allow_empty: bool = False) -> str:
    if field not in record or record[field] is None:
        raise DataError("missing", line=line, field=field)
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {type(value).__name__}", line=line, field=field)
    if not allow_empty and not value.strip():
        raise DataError("empty", line=line, field=field)
    return value


def _parse_label(value: Any, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(
            f"must be a string or an integer, got {type(value).__name__}", line=line, field="label"
        )
    label = str(value)
    if not label.strip():
        raise DataError("empty", line=line, field="label")
    return label


def _parse_classification(record: dict, line: int, require_labels: bool) -> ClassificationExample:
    text = _require_str(record, "text", line)
    text_pair = record.get("text_pair")
    if text_pair is not None:
        if not isinstance(text_pair, str):
            raise DataError(
                f"must be a string or null, got {type(text_pair).__name__}", line=line, field="text_pair"
            )
        if not text_pair.strip():
            text_pair = None
    raw_label = record.get("label")
    if raw_label is None:
        if require_labels:
            raise DataError("missing", line=line, field="label")
        label = None
    else:
        label = _parse_label(raw_label, line)
    return ClassificationExample(text=text, text_pair=text_pair, label=label)


def _parse_str_list(value: Any, field: str, line: int) -> list[str]:
    if not isinstance(value, list):
        raise DataError(f"must be a list of strings, got {type(value).__name__}", line=line, field=field)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"item {i} must be a string, got {type(item).__name__}", line=line, field=field)
        if not item.strip():
            raise DataError(f"item {i} is empty or whitespace", line=line, field=field)
    return list(value)


def _parse_token(record: dict, line: int, require_labels: bool) -> TokenExample:
    text: str | None = None
    offsets: list[tuple[int, int]] | None = None
    if record.get("tokens") is not None:
        tokens = _parse_str_list(record["tokens"], "tokens", line)
        if not tokens:
            raise DataError("empty", line=line, field="tokens")
        if record.get("text") is not None:
            text = _require_str(record, "text", line)
            offsets = _locate_tokens(tokens, text)
            if offsets is None:
                raise DataError("tokens do not match field 'text'", line=line, field="tokens")
    elif record.get("text") is not None and not require_labels:
        text = _require_str(record, "text", line)
        tokens, offsets = split_words(text)
    else:
        raise DataError("missing", line=line, field="tokens")

    raw_tags = record.get("tags")
    tags: list[str] | None = None
    if raw_tags is None:
        if require_labels:
            raise DataError("missing", line=line, field="tags")
    else:
        tags = _parse_str_list(raw_tags, "tags", line)
        if len(tags) != len(tokens):
            raise DataError(
                f"has {len(tags)} tags but there are {len(tokens)} tokens", line=line, field="tags"
            )
    return TokenExample(tokens=tokens, tags=tags, offsets=offsets, text=text)


def _check_answers(context: str, texts: list[str], starts: list[int], line: int) -> None:
    for i, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if not text:
            raise DataError(f"answer {i} is empty", line=line, field="answers")
        if start < 0 or context[start : start + len(text)] != text:
            found = context[max(start, 0) : max(start, 0) + len(text)]
            raise DataError(
                f"answer {i} {text!r} does not match the context at answer_start={start} "
                f"(context has {found!r} there)",
                line=line,
                field="answers",
            )


def _parse_answers(value: Any, line: int) -> tuple[list[str], list[int]]:
    if not isinstance(value, dict):
        raise DataError(
            'must be an object {"text": [...], "answer_start": [...]}', line=line, field="answers"
        )
    texts = value.get("text")
    starts = value.get("answer_start")
    if texts is None or starts is None:
        raise DataError('needs both "text" and "answer_start" lists', line=line, field="answers")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError('"text" must be a list of strings', line=line, field="answers")
    if not isinstance(starts, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in starts
    ):
        raise DataError('"answer_start" must be a list of integers', line=line, field="answers")
    if len(texts) != len(starts):
        raise DataError(
            f'"text" has {len(texts)} items but "answer_start" has {len(starts)}', line=line, field="answers"
        )
    return list(texts), list(starts)


def _parse_qa(record: dict, line: int, require_labels: bool) -> QAExample:
    raw_id = record.get("id")
    if raw_id is None:
        qid = str(line)
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        qid = str(raw_id)
    else:
        raise DataError(f"must be a string, got {type(raw_id).__name__}", line=line, field="id")
    question = _require_str(record, "question", line)
    context = _require_str(record, "context", line)
    raw_answers = record.get("answers")
    if raw_answers is None:
        if require_labels:
            raise DataError("missing", line=line, field="answers")
        texts, starts = [], []
    else:
        texts, starts = _parse_answers(raw_answers, line)
    _check_answers(context, texts, starts, line)
    return QAExample(id=qid, question=question, context=context, answers=texts, answer_starts=starts)


_PARSERS = {
    "classification": _parse_classification,
    "token-classification": _parse_token,
    "question-answering": _parse_qa,
}


def parse_record(record: dict, task_type: str, *, line: int, require_labels: bool = True) -> Example:
    """Validate one record and turn it into an example; raises :class:`DataError` naming ``line``."""
    check_task_type(task_type)
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", line=line)
    return _PARSERS[task_type](record, line, require_labels)


def parse_records(records: Iterable[dict], task_type: str, *, require_labels: bool = True) -> list[Example]:
    """Parse a sequence of records; the line reported in errors is ``index + 1``."""
    return [
        parse_record(record, task_type, line=i + 1, require_labels=require_labels)
        for i, record in enumerate(records)
    ]


# --------------------------------------------------------------------------------------------------
# File reading
# --------------------------------------------------------------------------------------------------


def _suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in _TEXT_SUFFIXES:
        raise DataError(
            f"unsupported file type {suffix or '(none)'!r} for {filename!r}; "
            "use .jsonl, .ndjson, .json, .csv or .tsv"
        )
    return suffix


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError("not valid UTF-8 text", line=line) from None


def _check_limit(count: int, max_rows: int | None, line: int) -> None:
    if max_rows is not None and count > max_rows:
        raise DataError(f"too many rows: the limit is {max_rows}", line=line)


def _iter_jsonl(text: str, max_rows: int | None) -> Iterable[tuple[int, Any]]:
    count = 0
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        count += 1
        _check_limit(count, max_rows, line_no)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", line=line_no) from None
        yield line_no, value


def _csv_cell(value: str) -> str | None:
    return value if value.strip() else None


def _iter_csv(text: str, delimiter: str, max_rows: int | None) -> Iterable[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    count = 0
    prev_line = 0
    while True:
        start_line = prev_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", line=start_line) from None
        prev_line = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            continue
        count += 1
        _check_limit(count, max_rows, start_line)
        if len(row) != len(header):
            raise DataError(
                f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}", line=start_line
            )
        yield start_line, {name: _csv_cell(cell) for name, cell in zip(header, row, strict=True)}


def _check_csv_header(text: str, delimiter: str, require_labels: bool) -> None:
    """Raise early, before reading rows, if the header lacks a needed column."""
    try:
        for line, row in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            header = [cell.strip() for cell in row]
            needed = ("text", "label") if require_labels else ("text",)
            for column in needed:
                if column not in header:
                    raise DataError(
                        f"missing column (header is: {', '.join(header)})", line=line, field=column
                    )
            return
    except csv.Error as exc:
        raise DataError(f"malformed CSV header: {exc}", line=1) from None


def _iter_squad(doc: dict, max_rows: int | None) -> Iterable[tuple[int, dict]]:
    """Flatten SQuAD JSON into records; the "line" is the 1-based question number."""
    data = doc.get("data")
    if not isinstance(data, list):
        raise DataError('SQuAD JSON needs a "data" list', field="data")
    count = 0
    for a, article in enumerate(data):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f'data[{a}] needs a "paragraphs" list', line=count + 1, field="paragraphs")
        for p, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise DataError(f'{where} needs a "qas" list', line=count + 1, field="qas")
            context = para.get("context")
            for qa in para["qas"]:
                count += 1
                _check_limit(count, max_rows, count)
                if not isinstance(qa, dict):
                    raise DataError(f"{where}: each qa must be an object", line=count, field="qas")
                yield count, _squad_qa_record(qa, context, count)


def _squad_qa_record(qa: dict, context: Any, line: int) -> dict:
    raw = qa.get("answers")
    if raw is None:
        raw = []
    if not isinstance(raw, list) or not all(isinstance(ans, dict) for ans in raw):
        raise DataError("must be a list of {text, answer_start} objects", line=line, field="answers")
    if qa.get("is_impossible"):
        raw = []
    try:
        answers = {"text": [ans["text"] for ans in raw], "answer_start": [ans["answer_start"] for ans in raw]}
    except KeyError as exc:
        raise DataError(f"an answer lacks {exc.args[0]!r}", line=line, field="answers") from None
    return {"id": qa.get("id"), "question": qa.get("question"), "context": context, "answers": answers}


def _iter_json(text: str, task_type: str, max_rows: int | None) -> Iterable[tuple[int, Any]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    if isinstance(doc, dict) and "data" in doc:
        if task_type != "question-answering":
            raise DataError("SQuAD-format JSON is only valid for question-answering")
        yield from _iter_squad(doc, max_rows)
        return
    if not isinstance(doc, list):
        raise DataError("a .json file must hold a list of records or SQuAD-format data")
    for i, record in enumerate(doc):
        _check_limit(i + 1, max_rows, i + 1)
        yield i + 1, record


def _iter_raw_records(
    text: str, suffix: str, task_type: str, max_rows: int | None, require_labels: bool
) -> Iterable[tuple[int, Any]]:
    if suffix in (".jsonl", ".ndjson"):
        return _iter_jsonl(text, max_rows)
    if suffix == ".json":
        return _iter_json(text, task_type, max_rows)
    if task_type != "classification":
        raise DataError(f"{suffix} files are only supported for classification; use JSONL")
    delimiter = "\t" if suffix == ".tsv" else ","
    _check_csv_header(text, delimiter, require_labels)
    return _iter_csv(text, delimiter, max_rows)


def read_examples_bytes(
    data: bytes,
    filename: str,
    task_type: str,
    *,
    require_labels: bool = True,
    max_rows: int | None = None,
) -> list[Example]:
    """Parse an uploaded file's bytes; the format is picked from ``filename``'s extension."""
    check_task_type(task_type)
    suffix = _suffix(filename)
    text = _decode(data)
    if not text.strip():
        raise DataError(f"the file {filename!r} is empty")
    examples = [
        parse_record(record, task_type, line=line, require_labels=require_labels)
        for line, record in _iter_raw_records(text, suffix, task_type, max_rows, require_labels)
    ]
    if not examples:
        raise DataError(f"the file {filename!r} holds no records")
    return examples


def read_examples(
    path: str | Path,
    task_type: str,
    *,
    require_labels: bool = True,
    max_rows: int | None = None,
) -> list[Example]:
    """Read examples from a .jsonl/.ndjson, .json, .csv or .tsv file (see the module docstring)."""
    path = Path(path)
    return read_examples_bytes(
        path.read_bytes(), path.name, task_type, require_labels=require_labels, max_rows=max_rows
    )


def detect_columns(data: bytes, filename: str, *, max_records: int = 1000) -> list[str]:
    """Column names seen in an upload (for a summary); best effort, never raises on bad content.

    CSV/TSV: the header.  JSONL / JSON list: the union of keys of the first ``max_records`` records in
    order of first appearance.  SQuAD JSON: ``["id", "question", "context", "answers"]``.
    """
    try:
        suffix = _suffix(filename)
        text = _decode(data)
    except DataError:
        return []
    if suffix in (".csv", ".tsv"):
        for row in csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","):
            if row and any(cell.strip() for cell in row):
                return [cell.strip() for cell in row]
        return []
    records: list[Any] = []
    if suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            return []
        if isinstance(doc, dict) and "data" in doc:
            return ["id", "question", "context", "answers"]
        records = doc[:max_records] if isinstance(doc, list) else []
    else:
        for raw in text.splitlines():
            if len(records) >= max_records:
                break
            if raw.strip():
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            seen.update(dict.fromkeys(str(k) for k in record))
    return list(seen)


def label_list(examples: Iterable[Example]) -> list[str]:
    """Sorted unique labels: classification labels, token-classification tags; QA has none."""
    labels: set[str] = set()
    for ex in examples:
        if isinstance(ex, ClassificationExample) and ex.label is not None:
            labels.add(ex.label)
        elif isinstance(ex, TokenExample) and ex.tags is not None:
            labels.update(ex.tags)
    return sorted(labels)


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def _chunks(n: int, size: int = _ENCODE_CHUNK) -> Iterable[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _token_type_ids(enc: Any, i: int, length: int) -> list[int]:
    ids = enc.get("token_type_ids") if hasattr(enc, "get") else None
    return list(ids[i]) if ids is not None else [0] * length


def encode_classification(
    tokenizer: Any,
    examples: Sequence[ClassificationExample],
    label2id: dict[str, int] | None,
    max_length: int,
) -> list[dict]:
    """Features ``{"input_ids", "token_type_ids", "label"}``; label is -1 when unknown/absent.

    Pairs are encoded as ``tokenizer(text, text_pair, truncation="longest_first")``.  An example whose
    label is not in ``label2id`` raises :class:`DataError` with ``line = index + 1``, field ``label``.
    """
    labels: list[int] = []
    for i, ex in enumerate(examples):
        if ex.label is None or label2id is None:
            labels.append(-1)
        elif ex.label not in label2id:
            raise DataError(
                f"unknown label {ex.label!r} (known: {', '.join(sorted(label2id))})",
                line=i + 1,
                field="label",
            )
        else:
            labels.append(label2id[ex.label])

    features: list[dict | None] = [None] * len(examples)
    singles = [i for i, ex in enumerate(examples) if ex.text_pair is None]
    pairs = [i for i, ex in enumerate(examples) if ex.text_pair is not None]
    for group, is_pair in ((singles, False), (pairs, True)):
        for chunk in _chunks(len(group)):
            idx = [group[j] for j in chunk]
            texts = [examples[i].text for i in idx]
            if is_pair:
                enc = tokenizer(
                    texts,
                    [examples[i].text_pair for i in idx],
                    truncation="longest_first",
                    max_length=max_length,
                )
            else:
                enc = tokenizer(texts, truncation=True, max_length=max_length)
            for k, i in enumerate(idx):
                input_ids = list(enc["input_ids"][k])
                features[i] = {
                    "input_ids": input_ids,
                    "token_type_ids": _token_type_ids(enc, k, len(input_ids)),
                    "label": labels[i],
                }
    return [f for f in features if f is not None]


def _tag_ids(ex: TokenExample, label2id: dict[str, int] | None, line: int) -> list[int] | None:
    if ex.tags is None or label2id is None:
        return None
    ids = []
    for tag in ex.tags:
        if tag not in label2id:
            raise DataError(
                f"unknown tag {tag!r} (known: {', '.join(sorted(label2id))})", line=line, field="tags"
            )
        ids.append(label2id[tag])
    return ids


def _encode_words(tokenizer: Any, batch: list[list[str]], max_length: int) -> Any:
    return tokenizer(batch, is_split_into_words=True, truncation=True, max_length=max_length)


def _token_feature(
    input_ids: list[int],
    token_type_ids: list[int],
    word_ids: list[int | None],
    tag_ids: list[int] | None,
    n_words: int,
) -> dict:
    labels = []
    prev: int | None = None
    for w in word_ids:
        if w is None or w == prev or tag_ids is None:
            labels.append(IGNORE_INDEX)
        else:
            labels.append(tag_ids[w])
        prev = w
    kept = [w for w in word_ids if w is not None]
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "labels": labels,
        "word_ids": word_ids,
        "n_words_kept": (max(kept) + 1) if kept else 0,
        "n_words": n_words,
    }


def encode_tokens(
    tokenizer: Any,
    examples: Sequence[TokenExample],
    label2id: dict[str, int] | None,
    max_length: int,
) -> list[dict]:
    """Features for token classification (words encoded with ``is_split_into_words=True``).

    Keys: ``input_ids``, ``token_type_ids``, ``labels`` (the word's tag id on the FIRST word piece of
    each word, -100 on the other pieces, on special tokens, and everywhere when there are no tags or no
    ``label2id``), ``word_ids`` (word index per piece, ``None`` for specials), ``n_words_kept`` (words
    whose first piece survived truncation) and ``n_words``.  A word the tokenizer maps to no piece at all
    (e.g. only control characters) is replaced by the unknown token so that every word is labelled.
    Unknown tags raise :class:`DataError` with ``line = index + 1``, field ``tags``.
    """
    tag_ids = [_tag_ids(ex, label2id, i + 1) for i, ex in enumerate(examples)]
    features: list[dict] = []
    for chunk in _chunks(len(examples)):
        batch = [list(examples[i].tokens) for i in chunk]
        enc = _encode_words(tokenizer, batch, max_length)
        for k, i in enumerate(chunk):
            words = batch[k]
            word_ids = enc.word_ids(k)
            input_ids = list(enc["input_ids"][k])
            token_types = _token_type_ids(enc, k, len(input_ids))
            present = {w for w in word_ids if w is not None}
            n_kept = (max(present) + 1) if present else 0
            missing = [w for w in range(n_kept) if w not in present]
            if missing and tokenizer.unk_token is not None:
                words = [tokenizer.unk_token if w in missing else word for w, word in enumerate(words)]
                single = _encode_words(tokenizer, [words], max_length)
                word_ids = single.word_ids(0)
                input_ids = list(single["input_ids"][0])
                token_types = _token_type_ids(single, 0, len(input_ids))
            features.append(_token_feature(input_ids, token_types, list(word_ids), tag_ids[i], len(words)))
    return features


def _max_question_tokens(max_length: int, doc_stride: int) -> int:
    hard = max_length - 3 - doc_stride - 1
    if doc_stride < 0 or hard < 1:
        raise ValueError(
            f"doc_stride={doc_stride} leaves no room for the context with max_length={max_length}"
        )
    return max(1, min(hard, (max_length - 3) // 2))


def _fit_question(tokenizer: Any, question: str, limit: int) -> str:
    """Cut a question that is too long to leave room for the context (HF would raise)."""
    cut = limit
    while True:
        offsets = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= limit:
            return question
        if cut < 1:
            return question[: offsets[0][1]]
        question = question[: offsets[min(cut, len(offsets)) - 1][1]]
        cut -= 1


def _answer_positions(ex: QAExample, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    """Token indices of the first gold answer inside this window, or (0, 0)."""
    if not ex.answers:
        return 0, 0
    start_char = ex.answer_starts[0]
    end_char = start_char + len(ex.answers[0])
    ctx = [i for i, off in enumerate(offsets) if off is not None]
    if not ctx:
        return 0, 0
    first, last = ctx[0], ctx[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:  # type: ignore[index]
        return 0, 0
    start_tok = next(i for i in ctx if offsets[i][1] > start_char)  # type: ignore[index]
    end_tok = next(i for i in reversed(ctx) if offsets[i][0] < end_char)  # type: ignore[index]
    if end_tok < start_tok:
        return 0, 0
    return start_tok, end_tok


def encode_qa(
    tokenizer: Any,
    examples: Sequence[QAExample],
    max_length: int,
    doc_stride: int,
) -> list[dict]:
    """HF-style overlapping windows over the context (``stride=doc_stride`` overlapping tokens).

    Keys: ``input_ids``, ``token_type_ids``, ``example_index``, ``offsets`` (``(start, end)`` char
    offsets in the context for context tokens, ``None`` for question and special tokens),
    ``start_position`` / ``end_position`` (token indices of the first gold answer in this window; 0, 0 =
    CLS when it is not fully inside the window or there is none).  Questions too long to leave room
    for context are cut to ``min(max_length - doc_stride - 4, (max_length - 3) // 2)`` tokens.
    """
    q_limit = _max_question_tokens(max_length, doc_stride)
    features: list[dict] = []
    for chunk in _chunks(len(examples)):
        questions = [examples[i].question for i in chunk]
        lengths = tokenizer(questions, add_special_tokens=False)["input_ids"]
        questions = [
            _fit_question(tokenizer, q, q_limit) if len(ids) > q_limit else q
            for q, ids in zip(questions, lengths, strict=True)
        ]
        contexts = [examples[i].context for i in chunk]
        enc = tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        sample_map = enc["overflow_to_sample_mapping"]
        for f in range(len(enc["input_ids"])):
            example_index = chunk[sample_map[f]]
            seq_ids = enc.sequence_ids(f)
            offsets: list[tuple[int, int] | None] = [
                (int(off[0]), int(off[1])) if seq_ids[t] == 1 else None
                for t, off in enumerate(enc["offset_mapping"][f])
            ]
            start, end = _answer_positions(examples[example_index], offsets)
            input_ids = list(enc["input_ids"][f])
            features.append(
                {
                    "input_ids": input_ids,
                    "token_type_ids": _token_type_ids(enc, f, len(input_ids)),
                    "example_index": example_index,
                    "offsets": offsets,
                    "start_position": start,
                    "end_position": end,
                }
            )
    return features


# --------------------------------------------------------------------------------------------------
# QA post-processing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    score: float
    start: int
    end: int


def _softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _window_candidates(
    offsets: Sequence[tuple[int, int] | None],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int,
    max_answer_length: int,
) -> list[_Candidate]:
    n = len(offsets)
    starts = start_logits[:n]
    ends = end_logits[:n]
    start_idx = np.argsort(starts)[::-1][:n_best]
    end_idx = np.argsort(ends)[::-1][:n_best]
    out: list[_Candidate] = []
    for s in start_idx:
        if offsets[s] is None:
            continue
        for e in end_idx:
            if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            out.append(
                _Candidate(float(starts[s] + ends[e]), offsets[s][0], offsets[e][1])  # type: ignore[index]
            )
    return out


def _dedupe(candidates: list[_Candidate]) -> list[_Candidate]:
    """Best-first candidates, one per character span (overlapping windows repeat spans)."""
    best: dict[tuple[int, int], _Candidate] = {}
    for cand in candidates:
        key = (cand.start, cand.end)
        if key not in best or cand.score > best[key].score:
            best[key] = cand
    return sorted(best.values(), key=lambda c: c.score, reverse=True)


def postprocess_qa(
    examples: Sequence[QAExample],
    features: Sequence[dict],
    start_logits: Sequence[Sequence[float]] | np.ndarray,
    end_logits: Sequence[Sequence[float]] | np.ndarray,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    allow_no_answer: bool = False,
    null_threshold: float = 0.0,
) -> list[dict]:
    """Pick the best answer span for each example over all of its windows.

    A span's score is ``start_logit + end_logit``; spans must lie on context tokens, have
    ``end >= start`` and at most ``max_answer_length`` tokens.  The top ``n_best`` start and end
    indices of each window are combined (as in the HF / original BERT SQuAD code); a character span
    found in several overlapping windows counts once, with its best score.

    Returns, per example, ``{"id", "text", "start", "end", "score"}`` where ``start``/``end`` are
    character offsets in the context (end exclusive) and ``score`` is the softmax probability of the
    chosen answer among the ``n_best`` best candidates (plus the null answer when allowed).

    With ``allow_no_answer`` the null score is ``start[0] + end[0]`` (CLS) of the window most confident
    that an answer exists (the lowest null score, as in the BERT/HF SQuAD 2.0 code); the empty answer is
    returned (``text=""``, ``start=end=-1``) when ``null_score - best_span_score > null_threshold``
    or when no valid span exists at all.
    """
    by_example: dict[int, list[int]] = {}
    for f, feature in enumerate(features):
        by_example.setdefault(int(feature["example_index"]), []).append(f)

    results = []
    for e, ex in enumerate(examples):
        candidates: list[_Candidate] = []
        null_score: float | None = None
        for f in by_example.get(e, []):
            starts = np.asarray(start_logits[f], dtype=np.float64)
            ends = np.asarray(end_logits[f], dtype=np.float64)
            window_null = float(starts[0] + ends[0])
            if null_score is None or window_null < null_score:
                null_score = window_null
            candidates.extend(
                _window_candidates(features[f]["offsets"], starts, ends, n_best, max_answer_length)
            )
        candidates = _dedupe(candidates)[:n_best]
        results.append(_choose_answer(ex, candidates, null_score, allow_no_answer, null_threshold))
    return results


def _choose_answer(
    ex: QAExample,
    candidates: list[_Candidate],
    null_score: float | None,
    allow_no_answer: bool,
    null_threshold: float,
) -> dict:
    empty = {"id": ex.id, "text": "", "start": -1, "end": -1, "score": 0.0}
    scores = [c.score for c in candidates]
    use_null = allow_no_answer and null_score is not None
    if use_null:
        scores.append(null_score)  # type: ignore[arg-type]
    if not scores:
        return empty
    probs = _softmax(scores)
    if use_null and (not candidates or null_score - candidates[0].score > null_threshold):  # type: ignore[operator]
        return {**empty, "score": probs[-1]}
    if not candidates:
        return empty
    best = candidates[0]
    return {
        "id": ex.id,
        "text": ex.context[best.start : best.end],
        "start": best.start,
        "end": best.end,
        "score": probs[0],
    }


# --------------------------------------------------------------------------------------------------
# BIO decoding
# --------------------------------------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) for a tag.  ``O`` -> ("O", "");  ``B-PER`` -> ("B", "PER");
    a bare ``PER`` (IO / plain scheme) -> ("I", "PER");  a bare ``B``/``I``/``E``/``S`` -> (.., "_")."""
    if tag == "O" or not tag:
        return "O", ""
    if len(tag) >= 2 and tag[0] in "BIES" and tag[1] in "-_":
        return tag[0], tag[2:] or "_"
    if tag in ("B", "I", "E", "S"):
        return tag, "_"
    return "I", tag


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != type_


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != type_


def decode_bio(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, first_word, last_word_inclusive)`` from a tag sequence.

    Follows seqeval's default (conlleval-style, non-strict) chunking: IOB2, IOB1 and IOBES tags are
    understood, a stray ``I-X`` (after ``O`` or another type) starts a new entity, a type change ends
    one.  Tags without a prefix (plain ``PER``) are read as ``I-PER`` so runs of equal plain tags form one
    entity; ``O`` is outside.
    """
    chunks: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, raw in enumerate([*tags, "O"]):
        tag, type_ = _split_tag(raw)
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def spans_with_offsets(tags: Sequence[str], word_offsets: Sequence[tuple[int, int]], text: str) -> list[dict]:
    """Entities as ``[{"type", "start", "end", "text"}]`` with character offsets (end exclusive)."""
    if len(tags) > len(word_offsets):
        raise ValueError(f"{len(tags)} tags but only {len(word_offsets)} word offsets")
    spans = []
    for type_, first, last in decode_bio(tags):
        start, end = word_offsets[first][0], word_offsets[last][1]
        spans.append({"type": type_, "start": start, "end": end, "text": text[start:end]})
    return spans
