"""The web console at /ui: a small static app shipped in the package (app/api/console/: one HTML
page, one script, one stylesheet; no build step, no external URL). Its pages call the JSON API from
the browser with the key the user typed (kept in sessionStorage), so authorisation is the API's.

Besides the files, three read-only helpers the pages need that the API does not offer elsewhere:
the uploaded datasets, one dataset's summary (rows, columns, label distribution, first rows) and
the training options table (names, defaults, ranges) from app.engine.options."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, RedirectResponse

from app.api.auth import Train
from app.api.deps import DatasetFilesDep, SessionDep, SettingsDep
from app.api.errors import ApiError, InputError
from app.api.schemas import DatasetOut, TaskType
from app.db import datasets as db_datasets
from app.engine import data as D
from app.engine import tasks
from app.engine.options import OPTIONS

router = APIRouter(prefix="/ui", tags=["console"])

STATIC = Path(__file__).resolve().parents[1] / "console"
FILES = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css"}
PREVIEW_ROWS = 5
#: the console loads and calls nothing but this server
CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


@router.get("", include_in_schema=False)
def console_page() -> FileResponse:
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP}
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=headers)


@router.get("/", include_in_schema=False)
def console_slash() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/static/{name}", include_in_schema=False)
def console_file(name: str) -> FileResponse:
    if name not in FILES:
        raise ApiError(404, f"no console file {name!r}")
    return FileResponse(STATIC / name, media_type=FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/api/options")
def training_options() -> list[dict[str, Any]]:
    """The training hyperparameters POST /train accepts, with their defaults and ranges."""
    return [
        {
            "name": o.name,
            "kind": o.kind,
            "default": o.default,
            "help": o.help,
            "ge": o.ge,
            "gt": o.gt,
            "le": o.le,
            "choices": list(o.api_choices or o.choices or []) or None,
        }
        for o in OPTIONS
        if o.api
    ]


@router.get("/api/datasets", response_model=list[DatasetOut])
def list_datasets(_: Train, s: SessionDep) -> list[DatasetOut]:
    rows = sorted(db_datasets.list_datasets(s), key=lambda d: d.created_at or 0, reverse=True)
    return [DatasetOut.model_validate(d) for d in rows]


@router.get("/api/datasets/{dataset_id}/preview")
def preview_dataset(
    _: Train,
    s: SessionDep,
    settings: SettingsDep,
    files: DatasetFilesDep,
    dataset_id: str,
    task_type: Annotated[TaskType | None, Query()] = None,
) -> dict[str, Any]:
    """Rows, columns, label distribution (or score range) and the first parsed rows of an upload,
    read as `task_type` (default: the type it was uploaded for). Bad rows: 422 naming line and field."""
    ds = db_datasets.get_dataset(s, dataset_id)
    if ds is None:
        raise ApiError(404, f"no dataset with id {dataset_id!r}")
    task_type = task_type or ds.task_type
    if task_type is None:
        raise InputError.at(["query", "task_type"], "give the task type to read this dataset as")
    try:
        path = files.local_copy(ds.path, ds.sha256)  # S3: this node's verified copy
        examples = D.read_examples(path, task_type, max_rows=settings.max_dataset_rows)
    except D.DataError as err:
        loc: list[str | int] = ["query", "dataset_id"] + ([err.field] if err.field else [])
        raise InputError.at(loc, str(err), "data_error") from None
    except OSError:
        raise ApiError(404, f"the file of dataset {dataset_id!r} is missing") from None
    kind = tasks.get(task_type)
    labels = Counter(label for ex in examples for label in kind.labels_of(ex))
    scores = [float(ex.score) for ex in examples if isinstance(getattr(ex, "score", None), int | float)]
    return {
        "id": ds.id,
        "filename": ds.filename,
        "task_type": task_type,
        "rows": len(examples),
        "columns": list(ds.columns or []),
        "labels": dict(labels.most_common()),
        "scores": {"min": min(scores), "max": max(scores), "mean": sum(scores) / len(scores)}
        if scores
        else None,
        "first_rows": [asdict(ex) for ex in examples[:PREVIEW_ROWS]],
    }
