"""Turning a stored job payload (the API's validated request, `model_dump()`ed) into engine inputs.

Single:    {"task", "task_type", "train": split, "eval": split | None, "hyperparameters": {...},
            "init_from": str | None, "labels": [...] | None}
Multitask: {"tasks": [{"task", "task_type", "train", "eval", "labels"?}, ...], "hyperparameters": {...},
            "per_task_epochs": int}

A split is {"examples": [...]} (inline records the API has already parsed and validated, stored in
their parsed form so the worker does not parse them again), {"dataset_id": str} (an uploaded file,
read by the worker), or {"records": [...]} (raw records, parsed here; jobs queued by older versions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.engine import tasks
from app.engine.data import DataError, Example, parse_records, read_examples
from app.engine.train_config import TrainConfig


@dataclass
class DataRef:
    """Where a split came from, recorded in the checkpoint metadata."""

    kind: str  # "records" | "dataset"
    rows: int
    dataset_id: str | None = None
    filename: str | None = None
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "rows": self.rows}
        if self.dataset_id:
            d.update(dataset_id=self.dataset_id, filename=self.filename, sha256=self.sha256)
        return d


#: dataset id -> (path, filename, sha256), or None when there is no such dataset
DatasetLookup = Callable[[str], "tuple[Path, str, str] | None"]


def examples_split(examples: Sequence[Example]) -> dict[str, Any]:
    """The stored form of a split the API has parsed: the examples as plain JSON."""
    return {"examples": [asdict(ex) for ex in examples]}


def load_split(
    split: dict[str, Any] | None,
    task_type: str,
    lookup: DatasetLookup,
    *,
    what: str,
    max_rows: int | None = None,
) -> tuple[list[Example] | None, DataRef | None]:
    """Examples of one split (see the module docstring); (None, None) when absent."""
    if not split:
        return None, None
    if split.get("examples") is not None:  # parsed and validated by the API: trusted as they are
        example_type = tasks.get(task_type).example_type
        examples = [example_type(**doc) for doc in split["examples"]]
        return examples, DataRef("records", len(examples))
    records = split.get("records")
    dataset_id = split.get("dataset_id")
    if records is not None and (records or not dataset_id):
        try:
            examples = parse_records(records, task_type)
        except DataError as e:
            raise DataError(f"{what}: {e}") from e
        if not examples:
            raise DataError(f"{what}: no records")
        return examples, DataRef("records", len(examples))
    if dataset_id:
        found = lookup(str(dataset_id))
        if found is None:
            raise DataError(f"{what}: no dataset with id {dataset_id!r}", field="dataset_id")
        path, filename, sha = found
        if not path.is_file():
            raise DataError(f"{what}: the file of dataset {dataset_id!r} is missing", field="dataset_id")
        examples = read_examples(path, task_type, max_rows=max_rows)
        return examples, DataRef("dataset", len(examples), str(dataset_id), filename, sha)
    raise DataError(f"{what}: give either 'records' or 'dataset_id'")


def training_doc(hp: dict[str, Any] | None, config: TrainConfig, **extra: Any) -> dict[str, Any]:
    """The `training` document stored with a version."""
    return {"hyperparameters": dict(hp or {}), "config": config.to_dict(), **extra}
