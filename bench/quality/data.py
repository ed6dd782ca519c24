"""A quality task's examples: the datasets prepared (pinned, sha256-checked) and the budget's
(train, eval) subsets parsed by the engine, the same for every method."""

from __future__ import annotations

from collections import Counter

from bench.quality import log
from bench.quality.plan import DATA_SEED, TaskBudget


def prepare_datasets(names: list[str]) -> dict[str, dict]:
    """Fetch (pinned, sha256-checked) and convert each dataset; returns their manifests."""
    from bench import datasets as DS

    out = {}
    for name in names:
        DS.prepare(name, progress=log)
        out[name] = DS.read_manifest(name) or {}
    return out


def load_task_data(tb: TaskBudget) -> tuple[list, list]:
    """Parsed (train, eval) examples of a task budget, the same for every method."""
    from app.engine.data import parse_records
    from bench.datasets import load_split

    if tb.split_at is not None:
        records = load_split(tb.dataset, tb.train_split)
        train_recs, eval_recs = records[: tb.split_at], records[tb.split_at :]
        if tb.n_train is not None:
            train_recs = train_recs[: tb.n_train]
        if tb.n_eval is not None:
            eval_recs = eval_recs[: tb.n_eval]
    else:
        train_recs = load_split(tb.dataset, tb.train_split, tb.n_train, seed=DATA_SEED)
        eval_recs = load_split(tb.dataset, tb.eval_split, tb.n_eval, seed=DATA_SEED)
    return parse_records(train_recs, tb.task_type), parse_records(eval_recs, tb.task_type)


def majority_share(tb: TaskBudget) -> float | None:
    """Accuracy (%) of always answering the evaluation set's most frequent label: the floor a
    classification score must clear to mean anything. None for other task types, or without data."""
    if tb.task_type != "classification":
        return None
    try:
        _, ev = load_task_data(tb)
    except Exception:  # noqa: BLE001 - a report without the data cached still renders
        return None
    counts = Counter(e.label for e in ev)
    return 100.0 * max(counts.values()) / len(ev) if ev else None
