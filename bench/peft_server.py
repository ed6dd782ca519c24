"""Baseline (b) of bench.serving: the peft library's PrefixTuning behind a minimal FastAPI server.

What a user does today: one PeftModel over the same MiniLM, every task added as a PrefixTuning
adapter, and per request `set_adapter(task)` then a forward of that request's texts. A forward
can only run one adapter, so requests of different tasks cannot share a batch; the model is
shared, so requests are serialised by a lock (two threads switching adapters on one model
would run each other's prefix).

The adapters hold the same prefixes and heads as the PromptHub tasks of the same name: each
task's `prefix.kv` [L, 2, P, kv] is copied into its adapter's prompt embedding [P, L*2*kv]
(PEFT's layout, see `peft.PeftModel.get_prompt`), its head into a per-task nn.Linear.

Run: python -m bench.peft_server --tasks-file tasks.json --port 8100 (started by bench.serving).
tasks.json: {"store": <store dir>, "tasks": [[name, version], ...], "prefix_length": 16}
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import torch
from pydantic import BaseModel


class Body(BaseModel):
    inputs: list[str]


def build(tasks_file: Path, device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import warnings

    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from safetensors.torch import load_file

    from app.engine.backbone import load_backbone

    warnings.filterwarnings("ignore")  # "token type ids are not supported" on every forward
    doc = json.loads(Path(tasks_file).read_text())
    store = Path(doc["store"])
    bb = load_backbone(doc.get("backbone") or "all-MiniLM-L6-v2", device=device)
    tokenizer, model = bb.tokenizer, bb.model
    cfg = PrefixTuningConfig(
        task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=int(doc["prefix_length"])
    )
    pm = None
    heads: dict[str, torch.nn.Linear] = {}
    labels: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for name, version in doc["tasks"]:
        tensors = load_file(str(store / name / f"v{int(version):04d}.safetensors"))
        if pm is None:
            pm = get_peft_model(model, cfg, adapter_name=name)
        else:
            pm.add_adapter(name, cfg)
        kv = tensors["prefix.kv"]  # [L, 2, P, kv] (all layers carry a prefix in the benchmark)
        L, _, P, H = kv.shape
        with torch.no_grad():
            pm.prompt_encoder[name].embedding.weight.copy_(kv.permute(2, 0, 1, 3).reshape(P, L * 2 * H))
        w = tensors["head.classifier.weight"]
        head = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(tensors["head.classifier.bias"])
        heads[name] = head.to(device).eval()
        labels[name] = [f"l{i}" for i in range(w.shape[0])]
    assert pm is not None, "no tasks"
    pm.eval()
    return pm, tokenizer, heads, labels, time.perf_counter() - t0


def create_app(tasks_file: Path, device: str = "cpu"):
    from fastapi import FastAPI, HTTPException

    pm, tokenizer, heads, labels, load_s = build(tasks_file, device)
    lock = threading.Lock()
    app = FastAPI(title="peft-prefix-baseline")

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True, "adapters": len(heads), "load_s": load_s}

    @app.post("/predict/{task}")
    def predict(task: str, body: Body) -> dict:  # sync: FastAPI runs it in its thread pool
        if task not in heads:
            raise HTTPException(404, f"task {task!r} not found")
        with lock:
            enc = tokenizer(body.inputs, padding=True, truncation=True, max_length=128, return_tensors="pt")
            enc.pop("token_type_ids", None)
            with torch.inference_mode():
                pm.set_adapter(task)
                hidden = pm(**{k: v.to(device) for k, v in enc.items()}).last_hidden_state
                probs = torch.softmax(heads[task](hidden[:, 0]), dim=-1).cpu()
        names = labels[task]
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                {"label": names[best], "score": row[best], "scores": dict(zip(names, row, strict=True))}
            )
        return {"task": task, "predictions": out}

    return app


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks-file", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import uvicorn

    uvicorn.run(
        create_app(Path(args.tasks_file), args.device),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
