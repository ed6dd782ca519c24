"""One hyperparameter probe of the quality benchmark: ``python -m bench.quality_sweep``.

Trains one method on one task of the ``full`` budget with some settings changed (learning rate,
epochs, prefix length, prefix init, prefix dropout, MLP), evaluates on a (smaller) slice of the
task's evaluation set after every epoch, prints one JSON line and appends it to
``bench/results/quality-sweep.jsonl``. docs/quality.md lists the probes that chose the benchmark's
settings (``bench/quality/plan.py``).

    python -m bench.quality_sweep --task brown_pos --lr 3e-2 --epochs 6 --n-eval 300
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from bench.quality import plan as C

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality-sweep.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="brown_pos", choices=C.TASK_ORDER)
    p.add_argument("--method", default="p-tuning-v2", choices=list(C.METHOD_HP))
    p.add_argument("--lr", type=float, default=None, help="default: the method's lr in bench/quality/plan.py")
    p.add_argument("--epochs", type=int, default=None, help="default: the task's full-budget epochs")
    p.add_argument("--prefix-length", type=int, default=None)
    p.add_argument("--prefix-init", default="random", choices=["random", "tokens"])
    p.add_argument("--prefix-init-std", type=float, default=0.5)
    p.add_argument("--prefix-dropout", type=float, default=0.1)
    p.add_argument("--n-train", type=int, default=None, help="default: the task's full-budget n_train")
    p.add_argument("--batch-size", type=int, default=None, help="default: the task's full-budget batch size")
    p.add_argument("--n-eval", type=int, default=300, help="evaluation examples (the same seeded sample)")
    p.add_argument(
        "--eval-split",
        default="dev",
        help="split to score on (default dev: choosing settings on the table's test split would bias it); "
        "SQuAD and BoolQ have no separate dev split and use the benchmark's evaluation split",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


def _splits(dataset: str) -> set[str]:
    from bench.datasets import read_manifest

    return set(((read_manifest(dataset) or {}).get("files") or {}).keys())


def _epoch_metrics(entry: dict) -> dict:
    """One history entry's metrics ({task name: metrics} for single-task runs)."""
    m = entry.get("metrics") or {}
    first = next(iter(m.values()), None)
    return first if isinstance(first, dict) else m


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from app.engine.backbone import load_backbone
    from app.engine.evaluation import evaluate
    from app.engine.options import build_training
    from app.engine.train import train_task
    from bench.quality import data, log
    from bench.quality.run import ProgressPrinter, lora_prepare, score_of

    manifests = data.prepare_datasets([args.task])
    tb = C.FULL.task(args.task)
    changes: dict = {"n_eval": args.n_eval}
    if args.eval_split and tb.split_at is None and args.eval_split in _splits(args.task):
        changes["eval_split"] = args.eval_split
    if args.n_train:
        changes["n_train"] = args.n_train
    tb = replace(tb, **changes)
    hp = C.FULL.task_method_hp.get((args.task, args.method), C.METHOD_HP[args.method])
    if args.lr:
        # LoRA trains its adapters and its head at one LR (the adapters sit in the encoder copy,
        # whose LR is backbone_lr)
        hp = replace(hp, lr=args.lr, **({"backbone_lr": args.lr} if hp.lora_rank else {}))
    # the probe's own epochs / batch size / prefix length win over the task budget and a
    # (task, method) exception (run_hyperparameters reads them from hp first)
    hp = replace(
        hp,
        epochs=args.epochs or hp.epochs,
        batch_size=args.batch_size or hp.batch_size,
        prefix_length=args.prefix_length or hp.prefix_length,
    )
    backbone = load_backbone("minilm")
    train, ev = data.load_task_data(tb)
    labels = manifests[args.task].get("labels")
    flat = {
        **C.run_hyperparameters(tb, hp, labels),
        "prefix_init": args.prefix_init,
        "prefix_init_std": args.prefix_init_std,
        "prefix_dropout": args.prefix_dropout,
        "holdout_fraction": 0.0,
    }
    spec, config = build_training(tb.task_type, flat, labels)
    log(
        f"sweep {args.task}/{args.method}: lr {hp.lr:g}, {config.epochs} epochs at batch {config.batch_size}, {len(train)} train, {len(ev)} eval"
    )
    t0 = time.monotonic()
    result = train_task(
        backbone,
        spec,
        train,
        ev,
        config,
        progress=ProgressPrinter(args.task),
        prepare=lora_prepare(hp) if hp.lora_rank else None,
    )
    metrics = evaluate(backbone, result.task, ev, batch_size=64)
    rec = {
        "task": args.task,
        "method": args.method,
        "lr": hp.lr,
        **(
            {"lora": {"rank": hp.lora_rank, "alpha": hp.lora_alpha, "lr": hp.backbone_lr}}
            if hp.lora_rank
            else {}
        ),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "prefix_length": spec.prefix_length,
        "prefix_init": args.prefix_init,
        "prefix_init_std": args.prefix_init_std,
        "prefix_dropout": args.prefix_dropout,
        "n_train": len(train),
        "n_eval": len(ev),
        "eval_split": tb.eval_split,
        "metric": tb.metric,
        "score": round(score_of(metrics, tb.metric), 2),
        "per_epoch": [round(score_of(_epoch_metrics(h), tb.metric), 2) for h in result.history],
        "seconds": round(time.monotonic() - t0),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    line = json.dumps(rec)
    print(line, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
