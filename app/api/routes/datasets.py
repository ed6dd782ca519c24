"""POST /datasets: upload a JSONL / JSON / CSV / TSV file for training jobs to refer to by id."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from app.api.auth import Train
from app.api.deps import DatasetFilesDep, SessionDep, SettingsDep
from app.api.errors import ApiError, InputError
from app.api.schemas import DatasetOut, TaskType
from app.db import datasets as db
from app.engine import data as D

router = APIRouter(prefix="/datasets", tags=["datasets"])

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")


def _file_error(err: D.DataError) -> InputError:
    loc: list[str | int] = ["body", "file"]
    if err.field:
        loc.append(err.field)
    return InputError.at(loc, str(err), "data_error")


def _count_rows(data: bytes, suffix: str, max_rows: int) -> int:
    """Rows of a well-formed file of any task (no task type given): JSON syntax or CSV shape only."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise D.DataError("not valid UTF-8 text", line=data[: e.start].count(b"\n") + 1) from None
    rows = 0
    if suffix in (".jsonl", ".ndjson"):
        for line_no, raw in D.jsonl_lines(text):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as e:
                raise D.DataError(f"invalid JSON: {e.msg} (column {e.colno})", line=line_no) from None
            if not isinstance(value, dict):
                raise D.DataError(f"expected a JSON object, got {type(value).__name__}", line=line_no)
            rows += 1
    elif suffix == ".json":
        try:
            doc: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise D.DataError(f"invalid JSON: {e.msg}", line=e.lineno) from None
        if isinstance(doc, list):
            rows = len(doc)
        elif isinstance(doc, dict) and isinstance(doc.get("data"), list):  # SQuAD
            rows = sum(len(p.get("qas", [])) for a in doc["data"] for p in a.get("paragraphs", []))
        else:
            raise D.DataError("expected a JSON list of records or a SQuAD document")
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        width = None
        try:
            for row in reader:
                if not row or not any(c.strip() for c in row):
                    continue
                if width is None:
                    width = len(row)
                    continue
                if len(row) != width:
                    raise D.DataError(f"expected {width} fields, got {len(row)}", line=reader.line_num)
                rows += 1
        except csv.Error as e:
            raise D.DataError(f"malformed CSV: {e}", line=reader.line_num) from None
    if rows > max_rows:
        raise D.DataError(f"too many rows: {rows}, the limit is {max_rows}")
    if rows == 0:
        raise D.DataError("the file holds no records")
    return rows


@router.post("", status_code=201, response_model=DatasetOut)
def upload_dataset(
    _: Train,
    s: SessionDep,
    settings: SettingsDep,
    files: DatasetFilesDep,
    file: Annotated[UploadFile, File(description="JSONL, JSON, CSV or TSV")],
    task_type: Annotated[TaskType | None, Form()] = None,
) -> DatasetOut:
    filename = Path(file.filename or "").name
    suffix = Path(filename).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError.at(
            ["body", "file"], f"unsupported file type {suffix or '(none)'!r}: use {', '.join(SUFFIXES)}"
        )
    data = file.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, f"upload too large: the limit is {settings.max_upload_bytes} bytes")
    try:
        if task_type is not None:
            rows = len(D.read_examples_bytes(data, filename, task_type, max_rows=settings.max_dataset_rows))
        else:
            rows = _count_rows(data, suffix, settings.max_dataset_rows)
    except D.DataError as err:
        raise _file_error(err) from None
    stored = files.put(data, suffix)
    ds = db.create_dataset(
        s,
        filename=filename,
        task_type=task_type,
        rows=rows,
        columns=D.detect_columns(data, filename),
        path=str(stored.path),
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
    )
    return DatasetOut.model_validate(ds)
