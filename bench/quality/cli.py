"""``python -m bench.quality``: plan the runs, do (or resume) them, write the tables, ship."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.quality import __doc__ as QUALITY_DOC
from bench.quality import data, log, report, run, ship
from bench.quality import plan as C


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=QUALITY_DOC.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="the small smoke-test budget (~15 min on 2 CPU cores)"
    )
    p.add_argument("--tasks", default=",".join(C.TASK_ORDER))
    p.add_argument("--methods", default=",".join(C.ALL_METHODS))
    p.add_argument("--ablations", default=",".join(C.ABLATIONS), help="comma list, or 'none'")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--out", default=str(C.DEFAULT_OUT))
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="start no new run after this many minutes (finished runs stay cached)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="rebuild the tables from cached runs; train nothing"
    )
    p.add_argument(
        "--ship", action="store_true", help="publish the best P-Tuning v2 prefixes into prompts_store/"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.ablations = [] if args.ablations in ("", "none") else [a.strip() for a in args.ablations.split(",")]
    for t in args.tasks:
        if t not in C.TASK_ORDER:
            p.error(f"unknown task {t!r}; known: {', '.join(C.TASK_ORDER)}")
    for m in args.methods:
        if m not in C.ALL_METHODS:
            p.error(f"unknown method {m!r}; known: {', '.join(C.ALL_METHODS)}")
    for a in args.ablations:
        if a not in C.ABLATIONS:
            p.error(f"unknown ablation {a!r}; known: {', '.join(C.ABLATIONS)}")
    return args


def table_records(out: Path, budget: C.Budget, backbone: str, docs: dict[str, dict]) -> list[dict]:
    """The records the tables show: every run of the budget's whole plan (all tasks, methods and
    ablations) that is done on any of the table's backbones (C.TABLE_BACKBONES and ``backbone``),
    in this invocation (``docs``, by key) or cached by an earlier one, in plan order; then any of
    this invocation's runs outside that plan. So a run of a few tasks, methods or another backbone
    adds its rows to the tables and never drops the others'."""
    records: list[dict] = []
    seen: set[str] = set()
    for bb in dict.fromkeys([*C.TABLE_BACKBONES, backbone]):
        full = C.plan_runs(budget, list(C.TASK_ORDER), list(C.ALL_METHODS), list(C.ABLATIONS), bb)
        for r in full:
            key = r.key(budget, bb)
            doc = docs.get(key) or run.load_for_table(out, r, budget, bb)
            if doc is None:
                continue
            seen.add(key)
            for rec in run.expand(doc):
                records.append({**rec, "variant": r.variant} if r.kind == "single" else dict(rec))
    for key, doc in docs.items():
        if key not in seen:
            records += [dict(rec) for rec in run.expand(doc)]
    return report.dedupe(records)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    budget = C.BUDGETS["quick" if args.quick else "full"]
    out = Path(args.out)
    argv_used = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--report-only", "--ship")]
    command = " ".join(["python -m bench.quality", *argv_used])  # how to reproduce (resume) the table
    t_start = time.monotonic()

    manifests = data.prepare_datasets(
        list(dict.fromkeys([*args.tasks, *C.SHIP_TASKS])) if args.ship else args.tasks
    )
    from app.engine.backbone import load_backbone

    backbone = load_backbone(args.backbone)
    runs = C.plan_runs(budget, args.tasks, args.methods, args.ablations, args.backbone)
    records: list[dict] = []
    pending: list[str] = []
    docs: dict[str, dict] = {}
    for i, r in enumerate(runs, 1):
        key, old = r.key(budget, args.backbone), r.legacy_key(budget, args.backbone)
        doc = docs.get(key) or run.load_cached(out, key)
        if doc is not None:
            log(f"[{i}/{len(runs)}] cached {r.label} ({key})")
        elif args.report_only and old is not None and run.load_cached(out, old) is not None:
            log(f"[{i}/{len(runs)}] cached before the optimizer fix, shown marked: {r.label}")
            pending.append(f"{r.label} (rerun after the optimizer fix)")
            continue
        elif args.report_only:
            pending.append(r.label)
            continue
        elif args.time_budget_min is not None and time.monotonic() - t_start > 60 * args.time_budget_min:
            log(f"[{i}/{len(runs)}] not started (time budget): {r.label}")
            pending.append(r.label)
            continue
        else:
            log(f"[{i}/{len(runs)}] run {r.label} ({key})")
            doc = run.execute(r, key, budget, backbone, manifests)
            run.store_cached(out, key, doc)
        docs[key] = doc
        for rec in run.expand(doc):
            records.append({**rec, "variant": r.variant} if r.kind == "single" else dict(rec))
        # refresh the tables after every run, so an interrupted invocation still leaves them
        meta = report.run_meta(command, backbone, budget, manifests)
        report.write_results(out, budget, table_records(out, budget, args.backbone, docs), meta, [])
    meta = report.run_meta(command, backbone, budget, manifests)
    jpath, mpath = report.write_results(
        out, budget, table_records(out, budget, args.backbone, docs), meta, pending
    )
    log(f"wrote {jpath} and {mpath} ({len(records)} records, {len(pending)} pending)")
    if args.ship:
        shipped = ship.ship(report.dedupe(records), budget, backbone, manifests, f"{command} --ship")
        log(f"shipped {len(shipped)} task(s): {', '.join(s['task'] for s in shipped)}")
    print(mpath.read_text())
    return 0
