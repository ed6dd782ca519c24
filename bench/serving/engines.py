"""In-process engine comparison: PromptHub's backbone runtimes against what a user would pick.

    python -m bench.serving --engines                      # CPU, default run (a few minutes)
    python -m bench.serving --engines --device cuda        # on a GPU: torch fp32 / bf16 / fp16
    python -m bench.serving --engines --quick              # smoke run (tests/bench)

One process, one backbone (all-MiniLM-L6-v2), the same batches for every engine: `--texts`
texts cut into batches of `--batch-size` in their given order, each padded to its longest row.
Every engine runs the whole text set once per round; rounds rotate the order; medians over rounds.
texts/s = texts / time of the whole set; p50/p99 = per-batch latency; x = texts/s against the
Hugging Face model's own forward (fp32, SDPA) measured in the same rounds.

Engines (CPU): `hf-fp32` transformers BertModel; `ort-fp32-bare` / `ort-int8-bare` the same model
exported to ONNX (int8: onnxruntime quantize_dynamic, defaults); `prompthub-torch-fp32`,
`prompthub-compile-fp32` (PROMPTHUB_RUNTIME=compile, compiled before the rounds),
`prompthub-onnx-fp32`, `prompthub-onnx-int8`: a `--tasks`-task mixed batch (every row a task
drawn uniformly; 16-token prefixes at every layer, 4-label heads) through
engine.batch.mixed_forward, heads included, under torch.inference_mode as the server runs them;
`peft-lora-mixed`: PEFT LoRA r=8 with `--tasks` adapters and a mixed-adapter batch
(`adapter_names`); `peft-prefix-switch`: PEFT prefix tuning with `--tasks` adapters, a mixed batch
cut into one `set_adapter` + forward per task in it. On CUDA: `hf-fp32`, `hf-bf16`,
`prompthub-torch-{fp32,bf16,fp16}`, `prompthub-compile-bf16`.

Texts: `short` = BANKING77 test utterances (cached by bench.datasets; synthetic 4-12 word
sentences otherwise), `review` = sentences of the IMDB sample reviews (synthetic 8-40 word
sentences when not cached), `long` = the IMDB sample's whole reviews; at most 128 tokens.
`--tasks 10000` gives the mixed batches a pool of 10,000 tasks (each row a different task).
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import fmt, machine_info, md_table, save_results, synthetic_texts

CPU_ENGINES = (
    "hf-fp32",
    "ort-fp32-bare",
    "ort-int8-bare",
    "prompthub-torch-fp32",
    "prompthub-compile-fp32",
    "prompthub-onnx-fp32",
    "prompthub-onnx-int8",
    "peft-lora-mixed",
    "peft-prefix-switch",
)
CUDA_ENGINES = (
    "hf-fp32",
    "hf-bf16",
    "prompthub-torch-fp32",
    "prompthub-torch-bf16",
    "prompthub-torch-fp16",
    "prompthub-compile-bf16",
)


def texts_for(kind: str, n: int) -> tuple[list[str], str]:
    """(texts, where they come from)."""
    from bench import datasets as DS

    try:
        if kind == "short":
            recs = DS.load_split("banking77", "test", n, seed=0)
            return [r["text"] for r in recs], "BANKING77 test utterances"
        recs = DS.load_split("imdb_sample", "test")
        if kind == "long":
            reviews = [re.sub(r"<br\s*/?>", " ", r["text"]) for r in recs]
            random.Random(0).shuffle(reviews)
            return [reviews[i % len(reviews)] for i in range(n)], (
                f"IMDB sample reviews, whole, cut at 128 tokens ({len(reviews)} reviews, repeated to {n})"
            )
        sents = []
        for r in recs:
            text = re.sub(r"<br\s*/?>", " ", r["text"])
            sents += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 3]
        random.Random(0).shuffle(sents)
        if len(sents) >= n:
            return sents[:n], "IMDB sample review sentences"
    except Exception:  # noqa: BLE001 - not cached: synthetic texts, said in the table
        pass
    if kind == "short":
        return synthetic_texts(n, 4, 12, seed=1), "synthetic 4-12 word sentences"
    if kind == "long":
        return synthetic_texts(n, 80, 160, seed=3), "synthetic 80-160 word texts"
    return synthetic_texts(n, 8, 40, seed=2), "synthetic 8-40 word sentences"


def _batches(tok, texts: list[str], bs: int, device) -> list[dict]:
    out = []
    for s in range(0, len(texts), bs):
        enc = tok(texts[s : s + bs], padding=True, truncation=True, max_length=128, return_tensors="pt")
        out.append({k: v.to(device) for k, v in enc.items()})
    return out


def _export_bare(model, path: Path) -> None:
    import torch

    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones(2, 8, dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(
            Bare().eval(),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                k: {0: "batch", 1: "length"} for k in ("input_ids", "attention_mask", "token_type_ids")
            },
            opset_version=17,
            dynamo=False,
        )


def ort_bare_session(model, work: Path, int8: bool, threads: int, stem: str = "bare"):
    """An ONNX Runtime session of the bare `model` (exported once to `work/<stem>-fp32.onnx`; int8:
    onnxruntime's quantize_dynamic with its defaults, once, to `<stem>-int8.onnx`)."""
    import onnxruntime as ort

    path = work / f"{stem}-fp32.onnx"
    if not path.exists():
        _export_bare(model, path)
    if int8:
        from onnxruntime.quantization import quantize_dynamic

        q = work / f"{stem}-int8.onnx"
        if not q.exists():
            quantize_dynamic(str(path), str(q))
        path = q
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def lora_model(model, adapter_names: list[str]):
    """PEFT LoRA r=8 on query/value over `model` (wrapped in place), one adapter per name, each B
    matrix random (seeded: LoRA's B starts at zero, and a random one makes every adapter do real
    work)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0)
    pm = get_peft_model(model, cfg, adapter_name=adapter_names[0])
    # each further adapter added to the LoRA layers directly: PeftModel.add_adapter walks every
    # parameter of the model for each one, which makes 1,000 adapters take tens of minutes
    layers = [m for m in pm.modules() if isinstance(m, LoraLayer)]
    for name in adapter_names[1:]:
        pm.peft_config[name] = cfg
        for layer in layers:
            layer.update_layer(name, cfg.r, cfg.lora_alpha, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return pm.eval()


def build_engines(names: list[str], args, work: Path) -> tuple[dict[str, Callable[[dict], object]], object]:
    """(name -> fn(batch) running one forward of that engine on a tokenised batch, tokenizer)."""
    import copy

    import torch

    from app.engine import onnx_runtime as O
    from app.engine.backbone import load_backbone
    from app.engine.batch import mixed_forward
    from app.engine.heads import ClassificationHead, FrozenHead
    from app.engine.model import ServingTask, TaskSpec

    device = torch.device(args.device)
    bb = load_backbone("all-MiniLM-L6-v2", device=device)
    hf = bb.model
    threads = args.threads
    engines: dict[str, Callable] = {}
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)

    def tasks_of(backbone, dtype=None):
        out = []
        for _ in range(args.tasks):
            kv = torch.randn(backbone.num_layers, 2, args.prefix_length, backbone.kv_size, generator=g) * 0.5
            head = ClassificationHead(backbone.hidden_size, 4).eval()
            spec = TaskSpec(
                task_type="classification", labels=["a", "b", "c", "d"], prefix_length=args.prefix_length
            )
            t = ServingTask(
                spec=spec,
                head=FrozenHead.from_module(head),
                kv=kv,
                layer_mask=torch.ones(backbone.num_layers, dtype=torch.bool),
            )
            out.append(t.to(device))
        return out

    def mixed(backbone, pool):
        def run(batch):  # under inference_mode, as the server's batcher runs it
            n = batch["input_ids"].shape[0]
            rows = [pool[rng.randrange(len(pool))] for _ in range(n)]
            with torch.inference_mode():
                return mixed_forward(backbone, rows, batch)

        return run

    pool = tasks_of(bb)

    def hf_run(model):
        def run(batch):
            with torch.inference_mode():
                return model(**batch).last_hidden_state

        return run

    for name in names:
        if name == "hf-fp32":
            engines[name] = hf_run(hf)
        elif name == "hf-bf16":
            engines[name] = hf_run(copy.deepcopy(hf).to(torch.bfloat16))
        elif name in ("ort-fp32-bare", "ort-int8-bare"):
            sess = ort_bare_session(hf, work, name == "ort-int8-bare", threads)

            def ort_run(batch, sess=sess):
                feeds = {k: v.numpy() for k, v in batch.items()}
                return sess.run(None, feeds)[0]

            engines[name] = ort_run
        elif name in ("prompthub-torch-fp32", "prompthub-torch-fp32-padded"):
            own = copy.copy(bb)  # its own runtime slot and packing switch (shares the weights)
            own.pack_tokens = not name.endswith("padded")
            engines[name] = mixed(own, pool)
        elif name in ("prompthub-compile-fp32", "prompthub-compile-fp32-padded", "prompthub-compile-bf16"):
            from app.engine.compiled_runtime import attach as attach_compiled

            own = copy.copy(bb)  # its own runtime slot (and its own weights at bf16)
            own.pack_tokens = not name.endswith("padded")
            if name.endswith("bf16"):
                own = bb.with_model(copy.deepcopy(bb.model).to(torch.bfloat16))
            runner = attach_compiled(own)
            print(f"{name}: compiled in {runner.compile_seconds:.1f} s", file=sys.stderr, flush=True)
            engines[name] = mixed(own, pool)
        elif name in ("prompthub-torch-bf16", "prompthub-torch-fp16"):
            half = bb.with_model(
                copy.deepcopy(bb.model).to(torch.bfloat16 if name.endswith("bf16") else torch.float16)
            )
            engines[name] = mixed(half, pool)
        elif name in ("prompthub-onnx-fp32", "prompthub-onnx-int8", "prompthub-onnx-int8-ffnout32"):
            prec = "fp32" if name.endswith("fp32") and "int8" not in name else "int8"
            own = copy.copy(bb)  # shares the weights; its own runtime slot
            path = O.build(bb, prec, args.onnx_cache_dir, keep_ffn_out_fp32=name.endswith("ffnout32"))
            own.runtime = O.OnnxLayerLoop(path, prec, threads)
            engines[name] = mixed(own, pool)
        elif name == "peft-lora-mixed":
            engines[name] = _peft_lora(hf, args.tasks, rng)
        elif name == "peft-prefix-switch":
            engines[name] = _peft_prefix(hf, args.tasks, args.prefix_length, rng)
        else:
            raise SystemExit(f"unknown engine {name!r}")
    return engines, bb.tokenizer


def _peft_lora(hf, n_adapters: int, rng: random.Random):
    import copy

    import torch

    model = lora_model(copy.deepcopy(hf), [f"a{i}" for i in range(n_adapters)])

    def run(batch):
        n = batch["input_ids"].shape[0]
        names = [f"a{rng.randrange(n_adapters)}" for _ in range(n)]
        with torch.inference_mode():
            return model(**batch, adapter_names=names).last_hidden_state

    return run


def _peft_prefix(hf, n_adapters: int, prefix_length: int, rng: random.Random):
    """PEFT prefix tuning as its users serve many tasks: one PrefixTuning adapter a task and
    `set_adapter` per task, so a mixed batch is cut into one forward per task in it (at the batch's
    padded length, as every engine here gets the same batches)."""
    import copy
    import warnings

    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    warnings.filterwarnings("ignore", message=".*token type ids.*")
    cfg = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=prefix_length)
    model = get_peft_model(copy.deepcopy(hf), cfg, adapter_name="a0")
    for i in range(1, n_adapters):
        model.add_adapter(f"a{i}", cfg)
    model.eval()

    def run(batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        groups: dict[str, list[int]] = {}
        for i in range(ids.shape[0]):
            groups.setdefault(f"a{rng.randrange(n_adapters)}", []).append(i)
        out = []
        with torch.inference_mode():
            for adapter, rows in groups.items():
                idx = torch.tensor(rows, device=ids.device)
                model.set_adapter(adapter)
                out.append(model(input_ids=ids[idx], attention_mask=mask[idx]).last_hidden_state)
        return out

    return run


def measure(engines: dict, sets: dict, rounds: int, device: str) -> dict:
    import torch

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    runs: dict[tuple[str, str], list[dict]] = {(e, s): [] for e in engines for s in sets}
    for batches in sets.values():  # warm-up: two batches each
        for fn in engines.values():
            for b in batches[:2]:
                fn(b)
    names = list(engines)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for s, batches in sets.items():
            n_texts = sum(b["input_ids"].shape[0] for b in batches)
            for e in order:
                lat = []
                sync()
                t0 = time.perf_counter()
                for b in batches:
                    t = time.perf_counter()
                    engines[e](b)
                    sync()
                    lat.append(time.perf_counter() - t)
                total = time.perf_counter() - t0
                runs[(e, s)].append({"texts_per_s": n_texts / total, "lat": lat})
                print(f"[round {r + 1}/{rounds}] {s:6s} {e:22s} {n_texts / total:8.1f} texts/s", flush=True)
    out = {}
    for (e, s), rs in runs.items():
        lat = sorted(x for r in rs for x in r["lat"])
        out[f"{e}/{s}"] = {
            "engine": e,
            "texts": s,
            "texts_per_s": statistics.median(r["texts_per_s"] for r in rs),
            "rounds_texts_per_s": [r["texts_per_s"] for r in rs],
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving --engines", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--engine-list", default=None, help="comma-separated engines (default: by device)")
    p.add_argument("--texts", type=int, default=256, help="texts per set")
    p.add_argument("--sets", default="short,review,long")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tasks", type=int, default=64, help="tasks (and LoRA adapters) in the mixed batch")
    p.add_argument("--prefix-length", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--onnx-cache-dir", default="var/onnx")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--name", default="engines")
    args = p.parse_args(argv)
    if args.quick:
        args.texts, args.rounds, args.tasks, args.batch_size = 16, 1, 4, 8
    import torch

    torch.set_num_threads(args.threads)
    default = CUDA_ENGINES if args.device.startswith("cuda") else CPU_ENGINES
    names = [e for e in (args.engine_list or ",".join(default)).split(",") if e]
    t_run = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        engines, tok = build_engines(names, args, Path(tmp))
        sets, sources, tokens = {}, {}, {}
        for s in [x for x in args.sets.split(",") if x]:
            texts, sources[s] = texts_for(s, args.texts)
            sets[s] = _batches(tok, texts, args.batch_size, torch.device(args.device))
            lens = [len(tok(t, truncation=True, max_length=128)["input_ids"]) for t in texts]
            tokens[s] = {"mean": statistics.mean(lens), "max": max(lens)}
        print(f"[setup] {time.perf_counter() - t_run:.1f}s; texts: {sources}; tokens: {tokens}", flush=True)
        res = measure(engines, sets, args.rounds, args.device)
    for s in sets:
        base = res[f"hf-fp32/{s}"]["texts_per_s"] if f"hf-fp32/{s}" in res else None
        for e in names:
            r = res[f"{e}/{s}"]
            r["x_hf_fp32"] = r["texts_per_s"] / base if base else None
    command = "python -m bench.serving --engines " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "benchmark": "engines",
        "command": command.strip(),
        "machine": machine_info(args.device),
        "settings": vars(args),
        "texts": {s: {"source": sources[s], "tokens": tokens[s]} for s in sets},
        "wall_s": time.perf_counter() - t_run,
        "results": res,
    }
    return save_results(args.name, result, render(result, names, list(sets)), args.out)


LABELS = {
    "hf-fp32": "transformers BertModel, fp32 (SDPA)",
    "hf-bf16": "transformers BertModel, bf16",
    "ort-fp32-bare": "ONNX Runtime fp32, bare model",
    "ort-int8-bare": "ONNX Runtime int8 (quantize_dynamic), bare model",
    "prompthub-torch-fp32": "PromptHub torch fp32, {n}-task mixed batch",
    "prompthub-torch-fp32-padded": "PromptHub torch fp32, tokens not packed (PACK_TOKENS=false), {n}-task mixed batch",
    "prompthub-torch-bf16": "PromptHub torch bf16 (fp32 heads), {n}-task mixed batch",
    "prompthub-torch-fp16": "PromptHub torch fp16 (fp32 heads), {n}-task mixed batch",
    "prompthub-compile-fp32": "PromptHub torch.compile fp32, {n}-task mixed batch",
    "prompthub-compile-fp32-padded": "PromptHub torch.compile fp32, tokens not packed (PACK_TOKENS=false), {n}-task mixed batch",
    "prompthub-compile-bf16": "PromptHub torch.compile bf16 (fp32 heads), {n}-task mixed batch",
    "prompthub-onnx-fp32": "PromptHub onnx fp32, {n}-task mixed batch",
    "prompthub-onnx-int8": "PromptHub onnx int8, every projection (served default), {n}-task mixed batch",
    "prompthub-onnx-int8-ffnout32": "PromptHub onnx int8, FFN output fp32 (INT8_KEEP_FFN_OUT_FP32), {n}-task mixed batch",
    "peft-lora-mixed": "PEFT LoRA r=8, {n} adapters, mixed-adapter batch (adapter_names)",
    "peft-prefix-switch": "PEFT prefix tuning, {n} adapters, set_adapter per task in the batch",
}


def render(res: dict, names: list[str], sets: list[str]) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        "# Engine benchmark",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, device {m['device']}, torch {m['torch']}, "
        f"transformers {m.get('transformers')}, peft {m.get('peft')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])} (shared machine)  ",
        f"One process, {s['threads']} threads, batches of {s['batch_size']}, {s['texts']} texts a set, "
        f"{s['rounds']} rounds (order rotated), medians; x = texts/s against transformers fp32 in the same "
        "rounds; p50/p99 per batch. Texts: "
        + "; ".join(
            f"{k}: {v['source']} (mean {v['tokens']['mean']:.1f} tokens, max {v['tokens']['max']})"
            for k, v in res["texts"].items()
        )
        + ".",
        "",
        "## Engines",
        "",
    ]
    head = ["engine"]
    for t in sets:
        head += [f"{t} texts/s", f"{t} p50 ms", f"{t} p99 ms", f"{t} x"]
    rows = []
    for e in names:
        row = [LABELS.get(e, e).format(n=s["tasks"])]
        for t in sets:
            r = res["results"][f"{e}/{t}"]
            row += [fmt(r["texts_per_s"]), fmt(r["p50_ms"]), fmt(r["p99_ms"]), fmt(r["x_hf_fp32"], 2)]
        rows.append(row)
    lines.append(md_table(head, rows))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
