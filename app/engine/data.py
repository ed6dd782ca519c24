"""Reading training and prediction data: files and records in, parsed examples out.

Formats: JSONL/NDJSON (one record a line; lines end at "\\n" only), a JSON list of records,
SQuAD's JSON document (question answering), and CSV/TSV with a header for the task types whose
records are flat columns. What a record holds is up to its task type (app.engine.tasks).

Every bad record raises :class:`DataError` naming the 1-based line (record number for JSON files,
physical line for JSONL/CSV/TSV, where a CSV header is line 1) and the offending field. Nothing is
silently dropped; only blank lines are skipped.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

_TEXT_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".tsv"}


class DataError(ValueError):
    """A data problem, located by 1-based ``line`` and ``field`` where known, and by ``split``
    ("train", "eval") when the check saw several.

    ``str(err)`` reads like ``"line 7: field 'label': missing"`` (``"eval: line 7: ..."`` with a split).
    """

    def __init__(
        self, message: str, *, line: int | None = None, field: str | None = None, split: str | None = None
    ) -> None:
        self.message = message
        self.line = line
        self.field = field
        self.split = split
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.split] if self.split is not None else []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make_data_error, (self.message, self.line, self.field, self.split))


def _make_data_error(
    message: str, line: int | None, field: str | None, split: str | None = None
) -> DataError:
    return DataError(message, line=line, field=field, split=split)


class Example:
    """Base class of the parsed records of every task type (see app.engine.tasks)."""

    __slots__ = ()


def _task(task_type: str) -> Any:
    from app.engine import tasks

    return tasks.get(task_type)


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def parse_record(record: dict, task_type: str, *, line: int, require_labels: bool = True) -> Example:
    """Validate one record and turn it into an example; raises :class:`DataError` naming ``line``."""
    task = _task(task_type)
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", line=line)
    return task.parse(record, line=line, require_labels=require_labels)


def parse_records(records: Iterable[dict], task_type: str, *, require_labels: bool = True) -> list[Example]:
    """Parse a sequence of records; the line reported in errors is ``index + 1``."""
    return [
        parse_record(record, task_type, line=i + 1, require_labels=require_labels)
        for i, record in enumerate(records)
    ]


def label_list(examples: Iterable[Example], task_type: str | None = None) -> list[str]:
    """Sorted unique labels of the examples (classification labels, token tags; none for QA or
    regression). The task type is read from the examples when not given."""
    from app.engine import tasks

    labels: set[str] = set()
    for ex in examples:
        labels.update((tasks.get(task_type) if task_type else tasks.of_example(ex)).labels_of(ex))
    return sorted(labels)


# --------------------------------------------------------------------------------------------------
# Files
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


def jsonl_lines(text: str) -> Iterable[tuple[int, str]]:
    """(1-based line number, line) of a JSONL text. Lines end at "\\n" only (a trailing "\\r" is
    dropped): U+0085, U+2028 and U+2029 are valid inside JSON strings, where str.splitlines()
    would cut a record in two."""
    for line_no, raw in enumerate(text.split("\n"), start=1):
        yield line_no, raw[:-1] if raw.endswith("\r") else raw


def file_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a JSONL file, read a line at a time (lines end at "\\n" only,
    a trailing "\\r" and a UTF-8 BOM are dropped): what jsonl_lines gives for the whole text."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError("not valid UTF-8 text", line=line_no) from None
            line = line[:-1] if line.endswith("\n") else line
            yield line_no, line[:-1] if line.endswith("\r") else line


def _iter_jsonl(text: str, max_rows: int | None) -> Iterable[tuple[int, Any]]:
    return _iter_jsonl_lines(jsonl_lines(text), max_rows)


def _iter_jsonl_lines(lines: Iterable[tuple[int, str]], max_rows: int | None) -> Iterable[tuple[int, Any]]:
    count = 0
    for line_no, raw in lines:
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


def _iter_csv(text: str | IO[str], delimiter: str, max_rows: int | None) -> Iterable[tuple[int, dict]]:
    stream = io.StringIO(text, newline="") if isinstance(text, str) else text
    reader = csv.reader(stream, delimiter=delimiter)
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


def _check_csv_header(text: str | IO[str], delimiter: str, needed: tuple[str, ...]) -> None:
    """Raise early, before reading rows, if the header lacks a needed column."""
    stream = io.StringIO(text, newline="") if isinstance(text, str) else text
    try:
        for line, row in enumerate(csv.reader(stream, delimiter=delimiter), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            header = [cell.strip() for cell in row]
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


def _iter_json(text: str, task: Any, max_rows: int | None) -> Iterable[tuple[int, Any]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    if isinstance(doc, dict) and "data" in doc:
        if not task.squad_json:
            from app.engine import tasks

            which = ", ".join(t for t in tasks.TASK_TYPES if tasks.get(t).squad_json)
            raise DataError(f"SQuAD-format JSON is only valid for {which}")
        yield from _iter_squad(doc, max_rows)
        return
    if not isinstance(doc, list):
        raise DataError("a .json file must hold a list of records or SQuAD-format data")
    for i, record in enumerate(doc):
        _check_limit(i + 1, max_rows, i + 1)
        yield i + 1, record


def _iter_raw_records(
    text: str, suffix: str, task: Any, max_rows: int | None, require_labels: bool
) -> Iterable[tuple[int, Any]]:
    if suffix in (".jsonl", ".ndjson"):
        return _iter_jsonl(text, max_rows)
    if suffix == ".json":
        return _iter_json(text, task, max_rows)
    columns = task.csv_columns(require_labels)
    if columns is None:
        from app.engine import tasks

        which = ", ".join(t for t in tasks.TASK_TYPES if tasks.get(t).csv_columns(True) is not None)
        raise DataError(f"{suffix} files are only supported for {which}; use JSONL")
    delimiter = "\t" if suffix == ".tsv" else ","
    _check_csv_header(text, delimiter, columns)
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
    task = _task(task_type)
    suffix = _suffix(filename)
    text = _decode(data)
    if not text.strip():
        raise DataError(f"the file {filename!r} is empty")
    examples = [
        parse_record(record, task_type, line=line, require_labels=require_labels)
        for line, record in _iter_raw_records(text, suffix, task, max_rows, require_labels)
    ]
    if not examples:
        raise DataError(f"the file {filename!r} holds no records")
    return examples


def iter_examples_file(
    path: str | Path,
    task_type: str,
    *,
    require_labels: bool = True,
    max_rows: int | None = None,
    filename: str | None = None,
) -> Iterator[Example]:
    """The examples of a .jsonl/.ndjson, .csv or .tsv file, read a line at a time (a .json file is
    one document and is read whole); the same checks and errors as read_examples_bytes. The format
    is `filename`'s extension (default: the path's). Raises DataError when the file is empty or
    holds no records."""
    path = Path(path)
    name = filename or path.name
    task = _task(task_type)
    suffix = _suffix(name)
    if suffix == ".json":
        yield from read_examples_bytes(
            path.read_bytes(), name, task_type, require_labels=require_labels, max_rows=max_rows
        )
        return
    seen = False
    if suffix in (".jsonl", ".ndjson"):
        for line, record in _iter_jsonl_lines(file_lines(path), max_rows):
            seen = True
            yield parse_record(record, task_type, line=line, require_labels=require_labels)
    else:
        columns = task.csv_columns(require_labels)
        if columns is None:
            yield from read_examples_bytes(b"x", name, task_type, require_labels=require_labels)
            return
        delimiter = "\t" if suffix == ".tsv" else ","
        with open(path, encoding="utf-8-sig", newline="") as f:
            try:
                if not f.read(1 << 16).strip() and not f.read(1):
                    raise DataError(f"the file {name!r} is empty")
                f.seek(0)
                _check_csv_header(f, delimiter, columns)
                f.seek(0)
                for line, record in _iter_csv(f, delimiter, max_rows):
                    seen = True
                    yield parse_record(record, task_type, line=line, require_labels=require_labels)
            except UnicodeDecodeError as exc:
                raise DataError("not valid UTF-8 text", line=_bad_utf8_line(path, exc)) from None
    if not seen:
        empty = all(not line.strip() for _, line in file_lines(path))
        raise DataError(f"the file {name!r} {'is empty' if empty else 'holds no records'}")


def _bad_utf8_line(path: Path, exc: UnicodeDecodeError) -> int:
    """The line of the first byte that is not UTF-8 (read a block at a time)."""
    line = 1
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                block.decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason != "unexpected end of data":
                    return line + block[: e.start].count(b"\n")
            line += block.count(b"\n")
    return line


def read_examples(
    path: str | Path,
    task_type: str,
    *,
    require_labels: bool = True,
    max_rows: int | None = None,
) -> list[Example]:
    """Read examples from a .jsonl/.ndjson, .json, .csv or .tsv file (see the module docstring),
    a line at a time (iter_examples_file)."""
    return list(iter_examples_file(path, task_type, require_labels=require_labels, max_rows=max_rows))


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
        for _, raw in jsonl_lines(text):
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
