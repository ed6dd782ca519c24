"""Datasets: upload a JSONL / JSON / CSV / TSV file for training jobs to refer to by id (POST,
streamed to disk and parsed from the file), list them (GET), delete one (DELETE; refused with 409
while a queued or running job refers to it)."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi import Path as PathParam

from app.api.auth import Train
from app.api.deps import DatasetFilesDep, SessionDep, SettingsDep
from app.api.errors import ApiError, InputError
from app.api.pagination import (
    DEFAULT_LIMIT,
    PAGE_RESPONSES,
    CursorQuery,
    LimitQuery,
    decode_cursor,
    fill_page,
    set_next,
)
from app.api.schemas import DatasetOut, TaskType
from app.db import datasets as db
from app.engine import data as D
from app.store import UploadTooLarge

router = APIRouter(prefix="/datasets", tags=["datasets"])

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")
MAX_FILENAME_CHARS = 255  # the datasets.filename column
COLUMNS_HEAD_BYTES = 1 << 18  # the columns of a JSONL/CSV upload are read from its first 256 KiB


def _file_error(err: D.DataError) -> InputError:
    loc: list[str | int] = ["body", "file"]
    if err.field:
        loc.append(err.field)
    return InputError.at(loc, str(err), "data_error")


def _count_rows(path: Path, suffix: str, max_rows: int) -> int:
    """Rows of a well-formed file of any task (no task type given): JSON syntax or CSV shape only,
    read a line at a time (a .json document whole)."""
    rows = 0
    if suffix in (".jsonl", ".ndjson"):
        for line_no, raw in D.file_lines(path):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as e:
                raise D.DataError(f"invalid JSON: {e.msg} (column {e.colno})", line=line_no) from None
            if not isinstance(value, dict):
                raise D.DataError(f"expected a JSON object, got {type(value).__name__}", line=line_no)
            rows += 1
            if rows > max_rows:
                raise D.DataError(f"too many rows: {rows}, the limit is {max_rows}")
    elif suffix == ".json":
        data = path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise D.DataError("not valid UTF-8 text", line=data[: e.start].count(b"\n") + 1) from None
        del data
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
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")
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
                    if rows > max_rows:
                        raise D.DataError(f"too many rows: {rows}, the limit is {max_rows}")
            except csv.Error as e:
                raise D.DataError(f"malformed CSV: {e}", line=reader.line_num) from None
            except UnicodeDecodeError:
                raise D.DataError("not valid UTF-8 text", line=reader.line_num + 1) from None
    if rows > max_rows:
        raise D.DataError(f"too many rows: {rows}, the limit is {max_rows}")
    if rows == 0:
        raise D.DataError("the file holds no records")
    return rows


def _columns(path: Path, filename: str, suffix: str) -> list[str]:
    """The columns of an upload (best effort): a .json document whole, else its first 256 KiB."""
    with open(path, "rb") as f:
        head = f.read() if suffix == ".json" else f.read(COLUMNS_HEAD_BYTES)
    if suffix != ".json" and len(head) == COLUMNS_HEAD_BYTES and b"\n" in head:
        head = head[: head.rindex(b"\n") + 1]
    return D.detect_columns(head, filename)


def _filename(raw: str | None) -> str:
    """The upload's file name (its last path part), or 422 naming the field: at most 255
    characters, no NUL or other control characters (PostgreSQL refuses them: a 500 before)."""
    name = Path(raw or "").name
    if len(name) > MAX_FILENAME_CHARS:
        raise InputError.at(
            ["body", "file", "filename"],
            f"the file name is {len(name)} characters long; the limit is {MAX_FILENAME_CHARS}",
            "string_too_long",
        )
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise InputError.at(
            ["body", "file", "filename"], "the file name holds a NUL or another control character"
        )
    return name


@router.post("", status_code=201, response_model=DatasetOut)
def upload_dataset(
    _: Train,
    s: SessionDep,
    settings: SettingsDep,
    files: DatasetFilesDep,
    file: Annotated[UploadFile, File(description="JSONL, JSON, CSV or TSV")],
    task_type: Annotated[TaskType | None, Form()] = None,
) -> DatasetOut:
    filename = _filename(file.filename)
    suffix = Path(filename).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError.at(
            ["body", "file"], f"unsupported file type {suffix or '(none)'!r}: use {', '.join(SUFFIXES)}"
        )
    try:  # streamed to a temp file a chunk at a time, then parsed from it a line at a time
        spooled = files.spool(file.file, suffix, settings.max_upload_bytes)
    except UploadTooLarge:
        raise ApiError(413, f"upload too large: the limit is {settings.max_upload_bytes} bytes") from None
    try:
        if task_type is not None:
            rows = sum(
                1
                for _ in D.iter_examples_file(
                    spooled.path, task_type, max_rows=settings.max_dataset_rows, filename=filename
                )
            )
        else:
            rows = _count_rows(spooled.path, suffix, settings.max_dataset_rows)
        columns = _columns(spooled.path, filename, suffix)
        stored = files.keep(spooled, suffix)
    except D.DataError as err:
        files.discard(spooled)
        raise _file_error(err) from None
    except BaseException:
        files.discard(spooled)
        raise
    ds = db.create_dataset(
        s,
        filename=filename,
        task_type=task_type,
        rows=rows,
        columns=columns,
        path=str(stored.path),
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
    )
    return DatasetOut.model_validate(ds)


@router.get("", response_model=list[DatasetOut], responses=PAGE_RESPONSES)
def list_datasets(
    _: Train,
    s: SessionDep,
    request: Request,
    response: Response,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    task_type: Annotated[TaskType | None, Query(description="only datasets uploaded for this type")] = None,
    filename_prefix: Annotated[
        str | None, Query(max_length=MAX_FILENAME_CHARS, description="only files whose name starts with this")
    ] = None,
) -> list[DatasetOut]:
    """Uploaded datasets, oldest first, a page at a time: the next page's cursor is in
    `X-Next-Cursor` (and `Link`), absent on the last page."""
    after = decode_cursor(cursor, [datetime, str])
    rows, next_key = fill_page(
        lambda a, n: db.page_datasets(
            s,
            after=a,  # type: ignore[arg-type]
            limit=n,
            task_type=task_type,
            filename_prefix=filename_prefix,
        ),
        lambda d: (d.created_at, d.id),
        lambda d: True,
        after,
        limit,
    )
    set_next(response, request, next_key)
    return [DatasetOut.model_validate(d) for d in rows]


@router.delete("/{dataset_id}")
def delete_dataset(
    _: Train,
    s: SessionDep,
    files: DatasetFilesDep,
    dataset_id: Annotated[str, PathParam(min_length=1, max_length=64)],
) -> dict:
    """Delete a dataset (its row, and its file unless another upload of the same bytes uses it);
    409 while a queued or running job refers to it."""
    ds = db.get_dataset(s, dataset_id)
    if ds is None:
        raise ApiError(404, f"no dataset with id {dataset_id!r}", code="dataset_not_found")
    jobs = db.datasets_in_use(s).get(dataset_id)
    if jobs:
        raise ApiError(
            409, f"dataset {dataset_id!r} is used by queued or running job(s) {', '.join(sorted(jobs))}"
        )
    path = ds.path
    db.drop_dataset(s, dataset_id)
    if not db.path_shared(s, path):
        files.delete(path)
    return {"deleted": dataset_id}
