"""The sweep behind the product's stopping rule: ``python -m bench.quality.stopping``.

A new user's POST /train holds part of train out, stops on it and keeps the best epoch. This sweep
trains with the product defaults (app.engine.options) on data sets the defaults were not read
from: the rule before the refit and one change at a time to it (patience, annealing, the held-out
share), and the refit on all of train for the epochs the held-out split chose, which the product
now does. Each run's published model is scored on a dev split the run never saw. A line per run goes to ``bench/results/stopping-sweep.jsonl``
and a table to ``bench/results/stopping-sweep.md``; docs/quality.md reads it.

    python -m bench.quality.stopping                              # every set x variant (resumes)
    python -m bench.quality.stopping --sets banking77 --variants no-refit refit
    python -m bench.quality.stopping --report
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.quality import sweep
from bench.quality.plan import REPO_ROOT

OUT_JSONL = REPO_ROOT / "bench" / "results" / "stopping-sweep.jsonl"
OUT_MD = REPO_ROOT / "bench" / "results" / "stopping-sweep.md"


@dataclass(frozen=True)
class StopSet:
    """Train on ``n_train`` records of ``train_split`` drawn with ``seed``; score on ``eval_split``."""

    dataset: str
    task_type: str
    metric: str
    train_split: str
    eval_split: str
    n_train: int | None
    n_eval: int | None
    seed: int
    #: a data set with one split: first `split_at` records train, the rest eval
    split_at: int | None = None


SETS: dict[str, StopSet] = {
    # the quality table's BANKING77 draw (1,500 of train, seed 0), scored on dev, not test
    "banking77": StopSet("banking77", "classification", "accuracy", "train", "dev", 1500, None, 0),
    # another 1,500 of train: same task, other examples
    "banking77-s1": StopSet("banking77", "classification", "accuracy", "train", "dev", 1500, None, 1),
    # a small sentiment task (200 reviews): 150 train, 50 scored
    "imdb_sample": StopSet("imdb_sample", "classification", "accuracy", "test", "test", None, None, 0, 150),
    "brown_pos": StopSet("brown_pos", "token-classification", "token_accuracy", "train", "dev", 600, 500, 0),
}

#: the product's rule and single changes to the one it had before the refit. "refit" is the rule
#: now (app.engine.train: the held-out run, then a second run on all of train for the epochs the
#: first one ran); its first records were made before the engine did it, by running those two
#: trainings here, which is exactly what the engine runs (tests/engine/test_train.py).
VARIANTS: dict[str, dict] = {
    "no-refit": {"refit": False},
    "anneal4": {"refit": False, "anneal_epochs": 4},
    "patience5": {"refit": False, "early_stopping_patience": 5},
    "holdout5": {"refit": False, "holdout_fraction": 0.05},
    "refit": {},
}


def load(s: StopSet) -> tuple[list, list]:
    from app.engine.data import parse_records
    from bench.datasets import load_split, prepare

    prepare(s.dataset)
    if s.split_at is not None:
        recs = load_split(s.dataset, s.train_split)
        train, ev = recs[: s.split_at], recs[s.split_at :]
    else:
        train = load_split(s.dataset, s.train_split, s.n_train, seed=s.seed)
        ev = load_split(s.dataset, s.eval_split, s.n_eval, seed=0)
    return parse_records(train, s.task_type), parse_records(ev, s.task_type)


def _train(backbone, s: StopSet, train: list, overrides: dict):
    from app.engine.options import build_training
    from app.engine.train import train_task

    spec, config = build_training(s.task_type, overrides)
    t0 = time.monotonic()
    result = train_task(backbone, spec, train, None, config)
    return result, time.monotonic() - t0


def run_one(backbone, name: str, variant: str, data: tuple[list, list]) -> dict:
    from app.engine.evaluation import evaluate

    s = SETS[name]
    train, ev = data
    result, seconds = _train(backbone, s, train, VARIANTS[variant])
    first = [h for h in result.history if not h.get("refit")]
    rec = {
        "set": name,
        "dataset": s.dataset,
        "task_type": s.task_type,
        "variant": variant,
        "n_train": len(train),
        "n_eval": len(ev),
        "epochs_run": len(first),
        "best_epoch": result.best_epoch,
        "held_out_curve": [
            round(100 * float(next(iter(h["metrics"].values()))[s.metric]), 2) if h.get("metrics") else None
            for h in first
        ],
    }
    if result.refit:
        rec["refit_epochs"] = result.refit["epochs"]
    rec["score"] = round(100 * float(evaluate(backbone, result.task, ev)[s.metric]), 2)
    rec["seconds"] = round(seconds, 1)
    return rec


def read_records(path: Path = OUT_JSONL) -> list[dict]:
    return sweep.read_records(path)


def report(records: list[dict]) -> str:
    sets = [n for n in SETS if any(r["set"] == n for r in records)]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in records)]
    cell = {(r["set"], r["variant"]): r for r in records}
    lines = [
        "# Stopping-rule sweep (P-Tuning v2 on MiniLM, product defaults, dev scores)",
        "",
        "Each run is a POST /train with no hyperparameters but the variant's change; the cell is the "
        "published model's score on a split the run never saw (epochs run, best epoch; refit: the "
        "epochs of the second run on all of train). Generated by `python -m bench.quality.stopping` "
        "from bench/results/stopping-sweep.jsonl.",
        "",
        "| variant | " + " | ".join(sets) + " | mean | minutes |",
        "|" + "---|" * (len(sets) + 3),
    ]
    for v in variants:
        row, scores, secs = [v], [], 0.0
        for n in sets:
            r = cell.get((n, v))
            if r is None:
                row.append("—")
                continue
            scores.append(r["score"])
            secs += r["seconds"]
            what = f"{r['epochs_run']} ep, best {r['best_epoch']}"
            if "refit_epochs" in r:
                what += f"; refit {r['refit_epochs']}"
            row.append(f"{r['score']:.2f} ({what})")
        mean = f"{sum(scores) / len(scores):.2f}" if len(scores) == len(sets) else "—"
        lines.append("| " + " | ".join(row) + f" | {mean} | {secs / 60:.1f} |")
    sizes = sorted({(r["set"], r["n_train"], r["n_eval"]) for r in records})
    lines += ["", "Sets: " + "; ".join(f"{n}: {a} train, {b} scored" for n, a, b in sizes), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality.stopping", description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only rewrite the markdown summary")
    args = p.parse_args(argv)
    if not args.report:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(args.threads)
        from app.engine.backbone import load_backbone

        backbone = load_backbone("minilm")
        records = {(r["set"], r["variant"]): r for r in read_records()}
        OUT_JSONL.parent.mkdir(parents=True, exist_ok=True)
        for variant in args.variants:
            for name in args.sets:
                if (name, variant) in records:
                    continue
                rec = run_one(backbone, name, variant, load(SETS[name]))
                records[(name, variant)] = rec
                rec["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                print(json.dumps(rec), flush=True)
                with OUT_JSONL.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
    OUT_MD.write_text(report(read_records()))
    print(f"wrote {OUT_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
