"""The sweep behind the per-task-type training defaults: ``python -m bench.quality.sweep``.

Learning rate x prefix length of P-Tuning v2 on MiniLM at one fixed budget (epochs, batch size),
over at least two data sets per task type, on subsets small enough for a 2-core CPU. Every run
scores the dev split after every epoch (no early stopping, so the curve is whole); a line per run
goes to ``bench/results/defaults-sweep.jsonl`` and a summary table to
``bench/results/defaults-sweep.md``. The chosen defaults (app/engine/options.py TASK_DEFAULTS) and
the reading of this table are in docs/quality.md.

    python -m bench.quality.sweep                       # the whole grid (resumes: done runs are kept)
    python -m bench.quality.sweep --sets banking77 --settings 1e-2:16 3e-2:64
    python -m bench.quality.sweep --report              # only rewrite the .md from the .jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.quality.plan import DATA_SEED, REPO_ROOT, TRAIN_SEED

OUT_JSONL = REPO_ROOT / "bench" / "results" / "defaults-sweep.jsonl"
OUT_MD = REPO_ROOT / "bench" / "results" / "defaults-sweep.md"


@dataclass(frozen=True)
class SweepSet:
    """One data set of the sweep: its subsets and sequence budget."""

    dataset: str
    task_type: str
    metric: str
    train_split: str
    eval_split: str
    n_train: int
    n_eval: int
    max_length: int
    #: a data set with one split: first `split_at` records train, the rest eval
    split_at: int | None = None


SETS: dict[str, SweepSet] = {
    "banking77": SweepSet("banking77", "classification", "accuracy", "train", "dev", 160, 100, 32),
    "imdb_sample": SweepSet(
        "imdb_sample", "classification", "accuracy", "test", "test", 96, 64, 64, split_at=130
    ),
    "brown_pos": SweepSet("brown_pos", "token-classification", "token_accuracy", "train", "dev", 96, 80, 40),
    "conll_sample": SweepSet(
        "conll_sample", "token-classification", "f1", "test", "test", 96, 76, 40, split_at=150
    ),
}

#: the grid, in the order it runs (every data set gets a setting before the next setting starts,
#: so a cut-short sweep still compares settings across data sets)
SETTINGS = ((1e-2, 16), (3e-2, 16), (3e-2, 64), (1e-2, 64), (3e-3, 16))
EPOCHS = 4
BATCH_SIZE = 16


def load(s: SweepSet) -> tuple[list, list]:
    from app.engine.data import parse_records
    from bench.datasets import load_split, prepare

    prepare(s.dataset)
    if s.split_at is not None:
        recs = load_split(s.dataset, s.train_split)
        train, ev = recs[: s.split_at][: s.n_train], recs[s.split_at :][: s.n_eval]
    else:
        train = load_split(s.dataset, s.train_split, s.n_train, seed=DATA_SEED)
        ev = load_split(s.dataset, s.eval_split, s.n_eval, seed=DATA_SEED)
    return parse_records(train, s.task_type), parse_records(ev, s.task_type)


def _score(metrics: dict, metric: str) -> float:
    return 100.0 * float(metrics[metric])


def run_one(backbone, s: SweepSet, data: tuple[list, list], method: str, lr: float, length: int) -> dict:
    from app.engine.options import build_training
    from app.engine.train import train_task

    train, ev = data
    hp = {
        "method": method,
        "lr": lr,
        "prefix_length": length,
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "max_length": s.max_length,
        "seed": TRAIN_SEED,
        "early_stopping_patience": 0,
        "holdout_fraction": 0.0,
    }
    if method == "fine-tuning":
        hp.pop("prefix_length")
        hp["backbone_lr"] = 1e-4
    spec, config = build_training(s.task_type, hp)
    t0 = time.monotonic()
    result = train_task(backbone, spec, train, ev, config)
    curve = [round(_score(h["metrics"]["task"], s.metric), 2) for h in result.history]
    best = max(range(len(curve)), key=lambda i: curve[i])
    return {
        "dataset": s.dataset,
        "task_type": s.task_type,
        "method": method,
        "lr": lr,
        "prefix_length": length if method != "fine-tuning" else None,
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "n_train": len(train),
        "n_eval": len(ev),
        "max_length": s.max_length,
        "metric": s.metric,
        "per_epoch": curve,
        "best": curve[best],
        "best_epoch": best + 1,
        "final": curve[-1],
        "seconds": round(time.monotonic() - t0, 1),
    }


def _key(rec: dict) -> tuple:
    return (
        rec["dataset"],
        rec["method"],
        rec["lr"],
        rec.get("prefix_length"),
        rec["epochs"],
        rec["batch_size"],
    )


def read_records(path: Path = OUT_JSONL) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(records: list[dict]) -> str:
    """Markdown: per data set, best dev score (best epoch) per (lr, prefix length), and the mean
    rank of each setting over the data sets of a task type."""
    lines = [
        "# Defaults sweep (P-Tuning v2 on MiniLM, dev scores)",
        "",
        f"Fixed budget: {EPOCHS} epochs at batch {BATCH_SIZE}, no early stopping, seed {TRAIN_SEED}; "
        "cell = best dev score over the epochs (its epoch) / last epoch. "
        "Generated by `python -m bench.quality.sweep` from bench/results/defaults-sweep.jsonl.",
        "",
    ]
    by_type: dict[str, list[str]] = {}
    for rec in records:
        by_type.setdefault(rec["task_type"], [])
        if rec["dataset"] not in by_type[rec["task_type"]]:
            by_type[rec["task_type"]].append(rec["dataset"])
    for task_type, sets in by_type.items():
        lines += [f"## {task_type}", ""]
        settings = sorted(
            {
                (r["lr"], r["prefix_length"])
                for r in records
                if r["task_type"] == task_type and r["method"] != "fine-tuning"
            }
        )
        header = "| lr | prefix | " + " | ".join(sets) + " | mean best | mean rank |"
        lines += [header, "|" + "---|" * (len(sets) + 4)]
        ranks: dict[tuple, list[int]] = {st: [] for st in settings}
        cells: dict[tuple, dict[str, dict]] = {st: {} for st in settings}
        for ds in sets:
            rs = [r for r in records if r["dataset"] == ds and r["method"] != "fine-tuning"]
            for r in rs:
                cells[(r["lr"], r["prefix_length"])][ds] = r
            ordered = sorted(rs, key=lambda r: -r["best"])
            for i, r in enumerate(ordered):
                ranks[(r["lr"], r["prefix_length"])].append(i + 1)
        for st in settings:
            row = [f"{st[0]:g}", str(st[1])]
            bests = []
            for ds in sets:
                r = cells[st].get(ds)
                row.append(f"{r['best']:.1f} (ep {r['best_epoch']}) / {r['final']:.1f}" if r else "—")
                if r:
                    bests.append(r["best"])
            mean = sum(bests) / len(bests) if bests else float("nan")
            rank = sum(ranks[st]) / len(ranks[st]) if ranks[st] else float("nan")
            lines.append("| " + " | ".join(row) + f" | {mean:.1f} | {rank:.1f} |")
        ft = [r for r in records if r["task_type"] == task_type and r["method"] == "fine-tuning"]
        if ft:
            lines += ["", "Full fine-tuning at the same budget (head lr, encoder lr 1e-4):", ""]
            for r in ft:
                lines.append(
                    f"- {r['dataset']}: lr {r['lr']:g}: best {r['best']:.1f} (ep {r['best_epoch']}), last {r['final']:.1f}"
                )
        lines.append("")
        secs = sum(r["seconds"] for r in records if r["task_type"] == task_type)
        lines += [
            f"{task_type}: {len([r for r in records if r['task_type'] == task_type])} runs, {secs / 60:.1f} wall-clock minutes on a shared 2-core machine.",
            "",
        ]
    sizes = sorted({(r["dataset"], r["n_train"], r["n_eval"], r["max_length"]) for r in records})
    lines += [
        "Subsets (seed 0): " + "; ".join(f"{d} {a} train / {b} dev at {m} tokens" for d, a, b, m in sizes),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument(
        "--settings", nargs="+", default=[f"{lr:g}:{n}" for lr, n in SETTINGS], help="lr:prefix_length ..."
    )
    p.add_argument(
        "--fine-tuning", action="store_true", help="also one full fine-tuning run per set (lr 1e-3)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only rewrite the markdown summary")
    args = p.parse_args(argv)
    if not args.report:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(args.threads)
        from app.engine.backbone import load_backbone

        backbone = load_backbone("minilm")
        done = {_key(r) for r in read_records()}
        OUT_JSONL.parent.mkdir(parents=True, exist_ok=True)
        data = {name: load(SETS[name]) for name in args.sets}
        grid = [("p-tuning-v2", float(v.split(":")[0]), int(v.split(":")[1])) for v in args.settings]
        if args.fine_tuning:
            grid.append(("fine-tuning", 1e-3, None))
        for method, lr, n in grid:
            for name in args.sets:
                s = SETS[name]
                key = (s.dataset, method, lr, n, EPOCHS, BATCH_SIZE, s.n_train)
                if key in done:
                    continue
                rec = run_one(backbone, s, data[name], method, lr, n or 0)
                rec["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                print(json.dumps(rec), flush=True)
                with OUT_JSONL.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
    OUT_MD.write_text(report(read_records()))
    print(f"wrote {OUT_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
