"""Accuracy of each shipped task on the backbone run at each precision / runtime.

    python -m bench.serving.precision                   # every shipped task, every precision
    python -m bench.serving.precision --squad-eval 400  # fewer SQuAD questions (the slow one)

For each shipped task (prompts_store/*/v0001) its own evaluation set (the split and sample its
metadata records: dataset, split, size, seed 0) is scored with the same prefix and head on:
onnx fp32 (equals torch fp32 to 1e-4 on logits: tests/engine/test_onnx_runtime.py), onnx int8
with dynamic activation quantization, and onnx int8 with static activation ranges calibrated on
real text of the shipped tasks' TRAIN splits run with their prefixes (never the eval data).
Writes bench/results/precision.{json,md}.

`<engine>+retune` scores the task re-tuned for that int8 graph first: its shipped prefix and head
trained on for `--retune-epochs` more epochs against the simulated int8 backbone
(app.engine.int8_sim, the training option `precision: int8`) on the training sample the shipped
version was trained on, at `--retune-lr-scale` times its learning rate; `<engine>+retune-fp32` is
the control: the same extra epochs in fp32, so a gain that is only more training shows there too.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from bench.common import md_table, save_results

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {"banking77": "banking77", "brown-pos": "brown_pos", "squad": "squad"}


def _eval_set(meta: dict, limit: int | None):
    from app.engine.data import parse_records
    from bench.datasets import load_split

    m, b = meta["metrics"], meta["training"]["budget"]
    n = b.get("n_eval")
    if limit is not None:
        n = min(n or limit, limit)
    recs = load_split(b["dataset"], b["eval_split"], n, seed=0)
    return parse_records(recs, b["task_type"]), m["primary_metric"], b


def calibration_reader(backbone, tasks: dict, per_task: int = 64, batch_size: int = 16):
    """Graph inputs of real TRAIN-split text of every shipped task, each batch run with its task's
    prefix (the activations int8 will see in serving)."""
    from app.engine import onnx_runtime as O
    from app.engine.batch import build_prefix_batch, collate
    from app.engine.data import parse_records
    from app.engine.predict import encode_examples
    from bench.datasets import load_split

    batches = []
    for name, (task, meta) in tasks.items():
        b = meta["training"]["budget"]
        recs = load_split(b["dataset"], b["train_split"], per_task, seed=1)
        ex = parse_records(recs, b["task_type"])
        feats = encode_examples(task.spec, backbone.tokenizer, ex, with_labels=False)[:per_task]
        for s in range(0, len(feats), batch_size):
            part = feats[s : s + batch_size]
            batch = collate(
                [{"input_ids": f["input_ids"], "token_type_ids": f.get("token_type_ids")} for f in part], 0
            )
            prefix = build_prefix_batch([task] * len(part), backbone.num_layers, backbone.kv_size)
            batches.append((batch, prefix))
        print(f"[calibration] {name}: {len(feats)} train features", flush=True)
    return O.CalibrationReader(O.calibration_batches(backbone, batches))


def retune(backbone, task, meta: dict, precision: str, keep_ffn_out_fp32: bool, epochs: int, lr_scale: float):
    """The shipped `task` trained on (prefix and head) for `epochs` epochs for `precision`."""
    import copy

    from app.engine.data import parse_records
    from app.engine.train import train_task
    from app.engine.train_config import TrainConfig
    from bench.datasets import load_split

    b, t = meta["training"]["budget"], meta["training"]["train"]
    examples = parse_records(load_split(b["dataset"], b["train_split"], b["n_train"], seed=0), b["task_type"])
    config = TrainConfig(
        epochs=epochs,
        lr=t["lr"] * lr_scale,
        batch_size=t["batch_size"],
        seed=t["seed"],
        early_stopping_patience=0,
        holdout_fraction=0.0,
        refit=False,
        precision=precision,
        int8_keep_ffn_out_fp32=keep_ffn_out_fp32,
    )
    t0 = time.perf_counter()
    result = train_task(backbone, copy.deepcopy(task.spec), examples, None, config, init_kv=task)
    print(f"[retune] {task.spec.task_type} for {precision}: {time.perf_counter() - t0:.0f}s", flush=True)
    return result.task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving.precision", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(n for n in SHIPPED if (ROOT / "prompts_store" / n).is_dir()))
    p.add_argument("--squad-eval", type=int, default=None, help="SQuAD questions (default: as shipped)")
    p.add_argument("--max-eval", type=int, default=None, help="cap every task's eval set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engines", default="onnx-fp32,onnx-int8,onnx-int8-static")
    p.add_argument("--cache-dir", default=str(ROOT / "var" / "onnx"))
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="TASK:PATH:LABEL",
        help="also score this checkpoint (e.g. one trained with `prompthub train --precision int8`) on "
        "shipped TASK's evaluation set, as the row 'TASK (LABEL)'; repeatable",
    )
    p.add_argument("--retune-epochs", type=int, default=2, help="extra epochs of a +retune engine")
    p.add_argument("--retune-lr-scale", type=float, default=0.3, help="x the shipped learning rate")
    p.add_argument("--out", default=None)
    p.add_argument("--name", default="precision")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from app.engine import onnx_runtime as O
    from app.engine.backbone import load_backbone
    from app.engine.checkpoint import load_checkpoint, read_metadata
    from app.engine.evaluation import evaluate
    from bench.common import machine_info

    bb = load_backbone("all-MiniLM-L6-v2")
    names = [n for n in args.tasks.split(",") if n]
    tasks = {}
    for n in names:
        path = ROOT / "prompts_store" / n / "v0001.safetensors"
        tasks[n] = (load_checkpoint(path, bb), read_metadata(path))
    extra = {}
    for spec in args.checkpoint:
        like, path, label = spec.split(":", 2)
        shipped = ROOT / "prompts_store" / like / "v0001.safetensors"
        extra[f"{like} ({label})"] = (load_checkpoint(path, bb), read_metadata(shipped))
    engines = [e for e in args.engines.split(",") if e]
    runners = {}
    t0 = time.perf_counter()
    for e in {e.partition("+")[0] for e in engines}:
        if e == "torch-fp32":
            runners[e] = None
        elif e == "onnx-fp32":
            runners[e] = O.OnnxLayerLoop(O.build(bb, "fp32", args.cache_dir), "fp32", args.threads)
        elif e == "onnx-int8":
            runners[e] = O.OnnxLayerLoop(O.build(bb, "int8", args.cache_dir), "int8", args.threads)
        elif e == "onnx-int8-ffnout32":
            path = O.build(bb, "int8", args.cache_dir, keep_ffn_out_fp32=True)
            runners[e] = O.OnnxLayerLoop(path, "int8", args.threads)
        elif e == "onnx-int8-static":
            reader = calibration_reader(bb, tasks)
            runners[e] = O.OnnxLayerLoop(O.build(bb, "int8", args.cache_dir, reader), "int8", args.threads)
        else:
            raise SystemExit(f"unknown engine {e!r}")
    print(f"[setup] {time.perf_counter() - t0:.1f}s", flush=True)

    rows = []
    for n, (task, meta) in {**tasks, **extra}.items():
        limit = args.squad_eval if n == "squad" and args.squad_eval else args.max_eval
        examples, metric, budget = _eval_set(meta, limit)
        row = {
            "task": n,
            "metric": metric,
            "eval_split": budget["eval_split"],
            "n_eval": len(examples),
            "shipped": None if n in extra else meta["metrics"].get(metric),
        }
        retuned: dict[tuple[str, bool], object] = {}
        for e in engines:
            runner_name, _, how = e.partition("+")
            scored = task
            if how:  # re-tuned for this graph (or, the control, for fp32) before scoring
                precision = "fp32" if how == "retune-fp32" else "int8"
                keep = runner_name.endswith("ffnout32")
                key = (precision, keep and precision == "int8")
                if key not in retuned:
                    bb.runtime = None
                    retuned[key] = retune(
                        bb, task, meta, precision, keep, args.retune_epochs, args.retune_lr_scale
                    )
                scored = retuned[key]
            bb.runtime = runners[runner_name]
            t = time.perf_counter()
            with torch.inference_mode():
                m = evaluate(bb, scored, examples, batch_size=32)
            row[e] = m[metric]
            row[f"{e}_s"] = time.perf_counter() - t
            print(f"[{n}] {e}: {metric} {m[metric]:.4f} ({row[f'{e}_s']:.0f}s)", flush=True)
        bb.runtime = None
        rows.append(row)

    def pts(x):  # metrics in [0, 1] as points; F1/EM are already points
        return None if x is None else (100 * x if x <= 1.0 else x)

    md = [
        "# Shipped tasks' accuracy by backbone precision",
        "",
        f"Command: `python -m bench.serving.precision {shlex.join(argv if argv is not None else sys.argv[1:])}`  ",
        "Same prefix and head (trained in fp32), only the frozen backbone's runtime/precision changes "
        f"(`+retune`: first trained {args.retune_epochs} more epochs for that int8 graph at "
        f"{args.retune_lr_scale}x the shipped learning rate; `+retune-fp32`: the same in fp32). "
        + (
            "Rows `task (label)`: another checkpoint (`--checkpoint`), trained as its label says, scored "
            "on that task's evaluation set. "
            if extra
            else ""
        )
        + "int8: per-channel int8 weights of the projections and feed-forward; `dynamic`: activation ranges "
        "per batch; `static`: ranges calibrated on train-split text of the shipped tasks run with their "
        "prefixes. Points; delta against onnx fp32 on the same examples.",
        "",
        "## Accuracy",
        "",
    ]
    head = ["task", "metric", "eval", "shipped (recorded)"] + engines + [f"{e} - fp32" for e in engines[1:]]
    table = []
    for r in rows:
        base = pts(r.get(engines[0]))
        table.append(
            [
                r["task"],
                r["metric"],
                f"{r['eval_split']} ({r['n_eval']})",
                "-" if r["shipped"] is None else f"{pts(r['shipped']):.2f}",
            ]
            + [f"{pts(r[e]):.2f}" for e in engines]
            + [f"{pts(r[e]) - base:+.2f}" for e in engines[1:]]
        )
    md.append(md_table(head, table))
    result = {
        "benchmark": "precision",
        "command": md[2],
        "machine": machine_info("cpu"),
        "rows": rows,
        "engines": engines,
    }
    return save_results(args.name, result, "\n".join(md), args.out)


if __name__ == "__main__":
    sys.exit(main())
