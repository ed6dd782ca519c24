"""Training cost: P-Tuning v2 against full fine-tuning and against peft's PrefixTuning.

    python -m bench.training                 # MiniLM, batch 16, 64 tokens, CPU
    python -m bench.training --device cuda   # on a machine with a GPU
    python -m bench.training --quick         # tiny smoke run (tests/bench)

Same backbone (all-MiniLM-L6-v2), same batches (synthetic texts tokenised to a fixed length,
4 labels), same batch size, same length, one classification head (CLS + linear) each:

* `p-tuning-v2`: app.engine.model.TaskModel (16-token prefix at every layer, no MLP), frozen
  encoder, AdamW over the prefix and head: the loop of app.engine.train;
* `fine-tuning`: TaskModel with method "fine-tuning" (the whole encoder trains);
* `peft-prefix`: peft.get_peft_model(PrefixTuningConfig(num_virtual_tokens=16)) over a copy of the
  same encoder, plus the same head.

Step time (forward + loss + backward + clip + AdamW step) is measured in one process, the
methods interleaved round by round (`--repeats` rounds of `--steps` steps each), medians and
ratios. Peak memory is measured per method in a fresh subprocess (CPU: peak RSS, reset before
the first step; CUDA: torch.cuda.max_memory_allocated), so methods do not share an allocator.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    REPO,
    fmt,
    machine_info,
    md_table,
    median,
    peak_rss_bytes,
    ratio,
    rss_bytes,
    save_results,
    synthetic_texts,
)

METHODS = ("p-tuning-v2", "fine-tuning", "peft-prefix")
#: also: "p-tuning-v2-padded", P-Tuning v2 with packed tokens off (Backbone.pack_tokens)
NUM_LABELS = 4


def make_batches(
    tokenizer,
    n_batches: int,
    batch_size: int,
    length: int,
    device: str,
    seed: int = 0,
    texts: str = "synthetic",
):
    """`synthetic`: texts of `length` to 2x `length` words, every row cut to `length` tokens (no
    padding); `banking77`: BANKING77 training utterances, each batch padded to its longest row
    (as app.engine.train's collate pads), cut at `length` tokens."""
    import torch

    n = n_batches * batch_size
    if texts == "banking77":
        from bench import datasets as DS

        items = [r["text"] for r in DS.load_split("banking77", "train", n, seed=seed)]
        padding = "longest"
    else:
        items = synthetic_texts(n, min_words=length, max_words=length * 2, seed=seed)
        padding = "max_length"
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
    out = []
    for i in range(n_batches):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        enc = tokenizer(items[sl], padding=padding, truncation=True, max_length=length, return_tensors="pt")
        out.append(
            {
                "input_ids": enc["input_ids"].to(device),
                "attention_mask": enc["attention_mask"].to(device),
                "token_type_ids": enc["token_type_ids"].to(device),
                "label": labels[sl].to(device),
            }
        )
    return out


class Runner:
    """One method's model, optimizer and training step."""

    def __init__(self, method: str, backbone, prefix_length: int, device: str) -> None:
        import torch

        from app.engine.model import TaskModel, TaskSpec

        self.method = method
        torch.manual_seed(0)
        labels = [f"l{i}" for i in range(NUM_LABELS)]
        if method == "p-tuning-v2-padded":  # the same, every padded position computed
            backbone = copy.copy(backbone)
            backbone.pack_tokens = False
            method = "p-tuning-v2"
        if method in ("p-tuning-v2", "fine-tuning"):
            spec = TaskSpec(
                task_type="classification", labels=labels, method=method, prefix_length=prefix_length
            )
            self.model = TaskModel(spec, backbone).to(device)
            params = self.model.trainable_parameters()
            lr = 1e-2 if method == "p-tuning-v2" else 5e-5
            total = backbone.num_parameters() + sum(p.numel() for p in self.model.head.parameters())
            if method == "p-tuning-v2":
                total += sum(p.numel() for p in self.model.prefix.parameters())
            self.forward = self.model
        else:
            import warnings

            from peft import PrefixTuningConfig, TaskType, get_peft_model

            from app.engine.heads import build_head

            warnings.filterwarnings("ignore")  # "token type ids are not supported" on every forward
            cfg = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=prefix_length)
            self.peft = get_peft_model(copy.deepcopy(backbone.model), cfg).to(device)
            spec = TaskSpec(task_type="classification", labels=labels, prefix_length=prefix_length)
            self.head = build_head(spec, backbone).to(device)
            params = [p for p in self.peft.parameters() if p.requires_grad] + list(self.head.parameters())
            lr = 1e-2
            total = sum(p.numel() for p in self.peft.parameters()) + sum(
                p.numel() for p in self.head.parameters()
            )

            def fwd(batch):
                hidden = self.peft(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).last_hidden_state
                return self.head(hidden)

            self.forward = fwd
        self.params = params
        self.trainable = sum(p.numel() for p in params)
        self.total = total
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        self.train()

    def train(self) -> None:
        if self.method == "peft-prefix":
            self.peft.train()
            self.head.train()
        else:
            self.model.train()

    def step(self, batch) -> float:
        import torch
        import torch.nn.functional as F

        logits = self.forward(batch)
        loss = F.cross_entropy(logits, batch["label"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def child_memory(args) -> dict:
    """Peak memory of one method's training steps, in this (fresh) process."""
    import torch

    from app.engine.backbone import load_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    bb = load_backbone("all-MiniLM-L6-v2", device=args.device)
    batches = make_batches(bb.tokenizer, 2, args.batch_size, args.length, args.device, texts=args.texts)
    runner = Runner(args.child, bb, args.prefix_length, args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes(os.getpid())
        try:  # reset the peak RSS (VmHWM) so that loading does not count
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    for i in range(max(2, args.mem_steps)):
        runner.step(batches[i % len(batches)])
    _sync(args.device)
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {
        "method": args.child,
        "before_bytes": before,
        "peak_bytes": peak,
        "training_extra_bytes": peak - before,
        "kind": "cuda max_memory_allocated" if cuda else "peak RSS (VmHWM)",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, default=64, help="tokens per example (padded/truncated)")
    p.add_argument(
        "--texts",
        default="synthetic",
        choices=["synthetic", "banking77"],
        help="synthetic: every row `--length` tokens; banking77: real utterances, padded per batch",
    )
    p.add_argument("--batches", type=int, default=4, help="distinct batches the steps cycle through")
    p.add_argument("--prefix-length", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="timed steps per method per round")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="rounds (methods interleaved)")
    p.add_argument("--mem-steps", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--quick", action="store_true", help="tiny run for the smoke test (no meaningful timings)")
    p.add_argument("--out", default=None)
    p.add_argument("--name", default="training")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.length, args.steps, args.warmup_steps, args.repeats, args.mem_steps = (
            2,
            16,
            1,
            1,
            1,
            2,
        )
        args.threads = args.threads or 1
    methods = [m for m in args.methods.split(",") if m]
    if "peft-prefix" in methods:
        try:
            import peft  # noqa: F401
        except ImportError:
            print("peft is not installed: peft-prefix is skipped (pip install peft)", file=sys.stderr)
            methods.remove("peft-prefix")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    if args.child:
        print(json.dumps(child_memory(args)))
        return 0

    import torch

    from app.engine.backbone import load_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info(args.device)
    t_run = time.perf_counter()
    bb = load_backbone("all-MiniLM-L6-v2", device=args.device)
    batches = make_batches(
        bb.tokenizer, args.batches, args.batch_size, args.length, args.device, texts=args.texts
    )
    runners = {m: Runner(m, bb, args.prefix_length, args.device) for m in methods}
    for r in runners.values():  # warm-up (allocator, kernels, AdamW state)
        for i in range(args.warmup_steps):
            r.step(batches[i % len(batches)])
    _sync(args.device)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for rnd in range(args.repeats):
        order = methods[rnd % len(methods) :] + methods[: rnd % len(methods)]
        for m in order:
            for i in range(args.steps):
                b = batches[(rnd * args.steps + i) % len(batches)]
                _sync(args.device)
                t0 = time.perf_counter()
                runners[m].step(b)
                _sync(args.device)
                times[m].append(time.perf_counter() - t0)
        print(
            f"[round {rnd + 1}/{args.repeats}] "
            + ", ".join(f"{m} {median(times[m]) * 1000:.0f} ms" for m in methods),
            flush=True,
        )

    memory: dict[str, dict] = {}
    if not args.no_memory:
        for m in methods:
            cmd = [
                sys.executable,
                "-m",
                "bench.training",
                "--child",
                m,
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
                "--length",
                str(args.length),
                "--texts",
                args.texts,
                "--prefix-length",
                str(args.prefix_length),
                "--mem-steps",
                str(args.mem_steps),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
            if out.returncode != 0:
                memory[m] = {"error": out.stderr[-2000:]}
                continue
            memory[m] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"[memory] {m}: {memory[m]['training_extra_bytes'] / 2**20:.0f} MiB over the loaded model",
                flush=True,
            )

    ft = median(times.get("fine-tuning", [])) if "fine-tuning" in times else None
    pf = median(times.get("peft-prefix", [])) if "peft-prefix" in times else None
    rows = []
    for m in methods:
        step = median(times[m])
        r = runners[m]
        rows.append(
            {
                "method": m,
                "step_ms": step * 1000,
                "step_ms_min": min(times[m]) * 1000,
                "steps_timed": len(times[m]),
                "examples_per_s": args.batch_size / step,
                "vs_fine_tuning": ratio(step, ft),
                "vs_peft_prefix": ratio(step, pf),
                "trainable_params": r.trainable,
                "total_params": r.total,
                "trainable_fraction": r.trainable / r.total,
                "memory": memory.get(m),
            }
        )
    targets = {}
    ptv2 = next((x for x in rows if x["method"] == "p-tuning-v2"), None)
    if ptv2 and ptv2["vs_fine_tuning"] is not None:
        targets["step_vs_fine_tuning"] = {
            "value": ptv2["vs_fine_tuning"],
            "target": 0.7,
            "lower_is_better": True,
        }
    if ptv2 and ptv2["vs_peft_prefix"] is not None:
        targets["step_vs_peft_prefix"] = {
            "value": ptv2["vs_peft_prefix"],
            "target": 1.0,
            "lower_is_better": True,
        }
    result = {
        "benchmark": "training",
        "command": "python -m bench.training " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "settings": vars(args),
        "wall_s": time.perf_counter() - t_run,
        "methods": rows,
        "raw_step_s": times,
        "targets": targets,
    }
    return save_results(args.name, result, render_markdown(result), args.out)


def render_markdown(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        "# Training benchmark",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, device {m['device']}, torch {m['torch']} "
        f"({m['torch_threads']} threads), transformers {m.get('transformers')}, peft {m.get('peft')}; load average "
        f"at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])} (shared machine)  ",
        f"MiniLM-L6, batch {s['batch_size']}, "
        + (
            f"BANKING77 training utterances padded per batch to its longest row (cut at {s['length']} tokens)"
            if s.get("texts") == "banking77"
            else f"{s['length']} tokens"
        )
        + f", prefix {s['prefix_length']} tokens at every layer; {s['repeats']} interleaved rounds of "
        f"{s['steps']} steps per method; medians. `p-tuning-v2-padded`: packed tokens off.",
        "",
    ]
    rows = []
    for r in res["methods"]:
        mem = r.get("memory") or {}
        rows.append(
            [
                r["method"],
                fmt(r["step_ms"], 0),
                fmt(r["examples_per_s"], 1),
                fmt(r["vs_fine_tuning"], 2),
                fmt(r["vs_peft_prefix"], 2),
                fmt(r["trainable_params"]),
                f"{100 * r['trainable_fraction']:.2f}%",
                fmt(mem["peak_bytes"] / 2**20, 0) if "peak_bytes" in mem else "-",
                fmt(mem["training_extra_bytes"] / 2**20, 0) if "training_extra_bytes" in mem else "-",
            ]
        )
    lines.append(
        md_table(
            [
                "method",
                "step ms",
                "examples/s",
                "x fine-tuning",
                "x PEFT",
                "trainable params",
                "trainable",
                "peak MiB",
                "peak over loaded model MiB",
            ],
            rows,
        )
    )
    kind = next(
        (r["memory"]["kind"] for r in res["methods"] if r.get("memory") and "kind" in r["memory"]), None
    )
    if kind:
        lines += ["", f"Memory: {kind}, in a fresh process per method."]
    if res["targets"]:
        lines += [
            "",
            md_table(
                ["target", "measured", "goal"],
                [[k, fmt(v["value"], 2), f"<= {v['target']}"] for k, v in res["targets"].items()],
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
