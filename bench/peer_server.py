"""The peers of bench.serving over HTTP: what a user would serve instead of PromptHub.

One minimal FastAPI server per engine, over the same MiniLM and the same per-task heads as the
PromptHub tasks of the same name, answering `POST /predict/<task>` {"inputs": [...]} with a label
and scores per text:

* `hf`: the transformers BertModel forward, fp32 (one task: a bare model and its head);
* `ort-fp32`, `ort-int8`: the same model exported to ONNX and run by ONNX Runtime
  (int8: `quantize_dynamic` with its defaults), the CPU user's pick (one task);
* `lora`: PEFT LoRA r=8 on query/value, one adapter per task, rows of different tasks in one
  forward (`adapter_names`, the one PEFT feature that mixes adapters in a batch). The adapters'
  B matrices are random (seeded), so every adapter does real work; their accuracy is irrelevant;
* `peft-prefix`: PEFT PrefixTuning, every task an adapter holding that task's K/V, and
  `set_adapter(task)` + a forward per request under a lock (one model, one active adapter at a
  time: requests of different tasks cannot share a forward).

Every engine but `peft-prefix` batches across requests the way PromptHub's batcher does: the
first waiting request opens a batch, which takes the requests that arrive within `--max-wait-ms`
up to `--max-batch-size` rows, then one tokenisation (padded to the longest row) and one forward.
The defaults are PromptHub's own settings (app/config.py), so both sides wait and fill alike.

Run: python -m bench.peer_server --engine lora --tasks-file tasks.json --port 8100 (started by
bench.serving). tasks.json: {"store": <store dir>, "tasks": [[name, version], ...],
"prefix_length": 16, "work": <dir for ONNX files>}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from pydantic import BaseModel, Field

ENGINES = ("hf", "ort-fp32", "ort-int8", "lora", "peft-prefix")


class Body(BaseModel):
    inputs: list[str] = Field(min_length=1, max_length=256)


class Heads:
    """Each task's classification head, read from its PromptHub checkpoint."""

    def __init__(self, store: Path, tasks: list, device: str) -> None:
        from safetensors.torch import load_file

        self.linear: dict[str, torch.nn.Linear] = {}
        self.kv: dict[str, torch.Tensor] = {}
        for name, version in tasks:
            tensors = load_file(str(store / name / f"v{int(version):04d}.safetensors"))
            w = tensors["head.classifier.weight"]
            head = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                head.weight.copy_(w)
                head.bias.copy_(tensors["head.classifier.bias"])
            self.linear[name] = head.to(device).eval()
            if "prefix.kv" in tensors:
                self.kv[name] = tensors["prefix.kv"]

    def predict(self, hidden: torch.Tensor, tasks: list[str]) -> list[dict]:
        """One prediction per row of `hidden` [B, L, H], each by its own task's head on the first token."""
        out: list[dict] = [{} for _ in tasks]
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            groups.setdefault(t, []).append(i)
        with torch.inference_mode():
            for t, rows in groups.items():
                probs = torch.softmax(self.linear[t](hidden[rows, 0]), dim=-1).cpu().tolist()
                for i, row in zip(rows, probs, strict=True):
                    best = max(range(len(row)), key=row.__getitem__)
                    out[i] = {"label": f"l{best}", "score": row[best]}
        return out


def _forward_fn(engine: str, doc: dict, heads: Heads, device: str, threads: int):
    """(tokenizer, fn(encoding, row_tasks) -> last hidden state [B, L, H] as a torch tensor)."""
    from app.engine.backbone import load_backbone

    bb = load_backbone(doc.get("backbone") or "all-MiniLM-L6-v2", device=device)
    model = bb.model.eval()
    if engine == "hf":

        def run(enc, tasks):
            with torch.inference_mode():
                return model(**enc).last_hidden_state

        return bb.tokenizer, run
    if engine in ("ort-fp32", "ort-int8"):
        from bench.serving.engines import ort_bare_session

        # each server its own files: two starting side by side must not write one file at once
        sess = ort_bare_session(
            model, Path(doc["work"]), engine == "ort-int8", threads, stem=f"peer-{engine}"
        )

        def run(enc, tasks):
            return torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in enc.items()})[0])

        return bb.tokenizer, run
    if engine == "lora":
        from bench.serving.engines import lora_model

        pm = lora_model(model, list(heads.linear))

        def run(enc, tasks):
            with torch.inference_mode():
                return pm(**enc, adapter_names=tasks).last_hidden_state

        return bb.tokenizer, run
    if engine == "peft-prefix":
        import warnings

        from peft import PrefixTuningConfig, TaskType, get_peft_model

        warnings.filterwarnings("ignore")  # "token type ids are not supported" on every forward
        cfg = PrefixTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=int(doc["prefix_length"])
        )
        pm = None
        for name, kv in heads.kv.items():
            if pm is None:
                pm = get_peft_model(model, cfg, adapter_name=name)
            else:
                pm.add_adapter(name, cfg)
            L, _, P, H = kv.shape  # [L, 2, P, kv] -> PEFT's prompt embedding [P, L*2*kv]
            with torch.no_grad():
                pm.prompt_encoder[name].embedding.weight.copy_(kv.permute(2, 0, 1, 3).reshape(P, L * 2 * H))
        assert pm is not None, "no tasks with a prefix"
        pm.eval()

        def run(enc, tasks):
            (task,) = set(tasks)  # one request, one task: set_adapter serves one adapter at a time
            enc.pop("token_type_ids", None)
            with torch.inference_mode():
                pm.set_adapter(task)
                return pm(**enc).last_hidden_state

        return bb.tokenizer, run
    raise SystemExit(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")


class MicroBatcher:
    """Requests wait at most `max_wait_s` for others to fill a batch of up to `max_rows` rows; one
    worker thread runs the batches in turn (`max_rows` 0: every request alone)."""

    def __init__(
        self, run_rows: Callable[[list[str], list[str]], list[dict]], max_rows: int, max_wait_s: float
    ):
        self.run_rows, self.max_rows, self.max_wait_s = run_rows, max_rows, max_wait_s
        self.queue: asyncio.Queue | None = None
        self.pool = ThreadPoolExecutor(1)
        self.batches = self.rows = 0

    async def submit(self, task: str, texts: list[str]) -> list[dict]:
        assert self.queue is not None, "the batcher is not started"
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((task, texts, fut))
        return await fut

    async def serve(self) -> None:
        self.queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            rows = len(items[0][1])
            deadline = loop.time() + self.max_wait_s
            while self.max_rows and rows < self.max_rows:
                try:
                    nxt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                if rows + len(nxt[1]) > self.max_rows:
                    self.queue.put_nowait(nxt)  # reorders at most this one request: next batch
                    break
                items.append(nxt)
                rows += len(nxt[1])
            texts = [t for _, xs, _ in items for t in xs]
            tasks = [task for task, xs, _ in items for _ in xs]
            try:
                preds = await loop.run_in_executor(self.pool, self.run_rows, texts, tasks)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                for *_, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.rows += len(texts)
            k = 0
            for _, xs, fut in items:
                if not fut.done():
                    fut.set_result(preds[k : k + len(xs)])
                k += len(xs)


def create_app(
    engine: str, tasks_file: Path, device: str = "cpu", max_rows: int = 32, max_wait_ms: float = 5.0
):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    t0 = time.perf_counter()
    doc = json.loads(Path(tasks_file).read_text())
    heads = Heads(Path(doc["store"]), doc["tasks"], device)
    tokenizer, forward = _forward_fn(engine, doc, heads, device, torch.get_num_threads())
    lock = threading.Lock()

    def run_rows(texts: list[str], tasks: list[str]) -> list[dict]:
        with lock:
            enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            return heads.predict(forward(enc, tasks), tasks)

    batcher = MicroBatcher(run_rows, 0 if engine == "peft-prefix" else max_rows, max_wait_ms / 1000)
    load_s = time.perf_counter() - t0

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.serve())
        yield
        task.cancel()

    app = FastAPI(title=f"peer-{engine}", lifespan=lifespan)

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True, "engine": engine, "tasks": len(heads.linear), "load_s": load_s}

    @app.get("/metrics")
    def metrics() -> dict:
        return {"batches": batcher.batches, "rows": batcher.rows}

    @app.post("/predict/{task}")
    async def predict(task: str, body: Body) -> dict:
        if task not in heads.linear:
            raise HTTPException(404, f"task {task!r} not found")
        return {"task": task, "predictions": await batcher.submit(task, body.inputs)}

    return app


def main() -> int:
    from app.config import Settings

    defaults = Settings.model_fields
    p = argparse.ArgumentParser(prog="python -m bench.peer_server", description=__doc__.split("\n")[0])
    p.add_argument("--engine", required=True, choices=ENGINES)
    p.add_argument("--tasks-file", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch-size", type=int, default=defaults["max_batch_size"].default)
    p.add_argument("--max-wait-ms", type=float, default=defaults["max_wait_ms"].default)
    args = p.parse_args()
    import uvicorn

    uvicorn.run(
        create_app(args.engine, Path(args.tasks_file), args.device, args.max_batch_size, args.max_wait_ms),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
