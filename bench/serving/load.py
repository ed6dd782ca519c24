"""Request mixes and the measurement phases of the serving benchmark (warm-up, memory, cold
load, new versions)."""

from __future__ import annotations

import json
import random
import time
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate

from bench.common import ServerProc, encode_request, fire, median, rss_bytes, synthetic_texts
from bench.serving.store import task_name

MIXES = ("one", "uniform", "zipf", "switch")


class Mix:
    """Picks the task of each next request."""

    def __init__(self, kind: str, names: list[str], zipf_s: float = 1.1, seed: int = 0) -> None:
        self.kind, self.names = kind, names
        self.rng = random.Random(seed)
        self.i = 0
        if kind == "zipf":
            self.cdf = list(accumulate(1.0 / (k + 1) ** zipf_s for k in range(len(names))))

    def __call__(self) -> str:
        n = self.names
        if self.kind == "one" or len(n) == 1:
            return n[0]
        if self.kind == "uniform":
            return n[self.rng.randrange(len(n))]
        if self.kind == "zipf":
            return n[min(bisect_left(self.cdf, self.rng.random() * self.cdf[-1]), len(n) - 1)]
        self.i += 1  # switch: round robin, so every request differs from the one before it
        return n[self.i % len(n)]


def request_factory(mix: Mix, bodies: list[bytes]):
    state = {"k": 0}

    def next_request() -> bytes:
        state["k"] += 1
        return encode_request(f"/predict/{mix()}", bodies[state["k"] % len(bodies)])

    return next_request


def make_bodies(texts_per_request: int, n: int = 512, seed: int = 0) -> list[bytes]:
    texts = synthetic_texts(n * texts_per_request, seed=seed)
    return [
        json.dumps({"inputs": texts[i * texts_per_request : (i + 1) * texts_per_request]}).encode()
        for i in range(n)
    ]


@dataclass
class Config:
    server: str  # "prompthub" | "bare" | an ablation | a peer ("hf", "ort-fp32", "ort-int8", "lora", "peft")
    n_tasks: int
    mix: str

    @property
    def key(self) -> str:
        return f"{self.server}/{self.n_tasks}/{self.mix}"


def batch_stats(port: int) -> tuple[float, float]:
    """(rows, forwards) so far: PromptHub's Prometheus counters, or a peer server's JSON /metrics."""
    import httpx

    s = c = 0.0
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    except httpx.HTTPError:
        return 0.0, 0.0
    if r.headers.get("content-type", "").startswith("application/json"):
        doc = r.json()
        return float(doc["rows"]), float(doc["batches"])
    for line in r.text.splitlines():
        if line.startswith("prompthub_batch_size_sum"):
            s = float(line.split()[-1])
        elif line.startswith("prompthub_batch_size_count"):
            c = float(line.split()[-1])
    return s, c


# ----------------------------------------------------------------------------- phases


def warm(port: int, names: list[str], clients: int = 8) -> float:
    body = json.dumps({"inputs": ["warm up"]}).encode()
    t0 = time.perf_counter()
    res = fire(port, [encode_request(f"/predict/{n}", body) for n in names], clients)
    bad = [names[i] for i, (st, _) in enumerate(res) if st != 200]
    if bad:
        raise RuntimeError(f"warm-up failed for {len(bad)} tasks, e.g. {bad[:3]}")
    return time.perf_counter() - t0


def memory_phase(server: ServerProc, counts: list[int], per_task_bytes: int) -> dict:
    time.sleep(0.5)
    base = rss_bytes(server.pid)
    rows = []
    loaded = 0
    for k in sorted(counts):
        warm(server.port, [task_name(i) for i in range(loaded, k)])
        loaded = k
        time.sleep(0.3)
        rss = rss_bytes(server.pid)
        rows.append(
            {
                "tasks": k,
                "rss_bytes": rss,
                "over_backbone_bytes": rss - base,
                "per_task_bytes": (rss - base) / k,
                "budget_bytes": base + k * per_task_bytes,
                "within_budget": rss <= base + k * per_task_bytes + 64 * 2**20,  # 64 MiB allocator slack
            }
        )
    return {"backbone_rss_bytes": base, "rows": rows}


def cold_phase(port: int, names: list[str]) -> dict:
    body = json.dumps({"inputs": ["cold start probe"]}).encode()
    cold, hot = [], []
    for n in names:
        req = encode_request(f"/predict/{n}", body)
        ((s1, t1),) = fire(port, [req])
        ((s2, t2),) = fire(port, [req])
        if s1 == 200 and s2 == 200:
            cold.append(t1 * 1000)
            hot.append(t2 * 1000)
    return {
        "first_request_ms": median(cold),
        "warm_request_ms": median(hot),
        "cold_load_ms_over_http": (median(cold) - median(hot)) if cold else None,
        "n": len(cold),
    }


#: A tiny sentiment training set for the new-version probe.
TRAIN_RECORDS = [
    {"text": t, "label": lab}
    for t, lab in [
        ("I loved this movie, wonderful acting", "pos"),
        ("a great and touching story", "pos"),
        ("brilliant, funny and warm", "pos"),
        ("one of the best films this year", "pos"),
        ("terrible plot and bad acting", "neg"),
        ("boring, I fell asleep", "neg"),
        ("an awful waste of time", "neg"),
        ("the worst film I have seen", "neg"),
    ]
]


def version_phase(port: int, timeout_s: float = 300.0) -> dict:
    """Train a task through the API twice; time from each job's success to its first prediction."""
    import asyncio
    from datetime import datetime

    import httpx

    hp = {"max_steps": 10, "epochs": 10, "batch_size": 8, "prefix_length": 8, "lr": 0.02, "max_length": 32}

    async def one(version: int) -> dict:
        body = {
            "task": "fresh",
            "task_type": "classification",
            "train": {"records": TRAIN_RECORDS},
            "hyperparameters": {**hp, "seed": version},
        }
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            r = await c.post("/train", json=body)
            r.raise_for_status()
            location = r.headers["Location"]
            seen: dict = {}
            stop = asyncio.Event()

            async def poll_predict() -> None:
                while not stop.is_set():
                    t0 = time.time()
                    r = await c.post("/predict/fresh", json={"inputs": ["what a film"]})
                    if r.status_code == 200 and r.json()["version"] == version and "t" not in seen:
                        seen["t"] = t0  # the request was sent after the version was live
                        seen["t_answer"] = time.time()
                        stop.set()
                    await asyncio.sleep(0.01)

            async def poll_job() -> dict:
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    job = (await c.get(location)).json()
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        return job
                    await asyncio.sleep(0.05)
                raise TimeoutError("training job did not finish")

            pred = asyncio.create_task(poll_predict())
            job = await poll_job()
            try:
                await asyncio.wait_for(stop.wait(), 30)
            except TimeoutError:
                pass
            stop.set()
            await pred
        if job["state"] != "succeeded":
            return {"version": version, "state": job["state"], "error": job.get("error")}
        finished = datetime.fromisoformat(str(job["finished_at"]).replace("Z", "+00:00")).timestamp()
        out = {"version": version, "state": "succeeded"}
        if "t" in seen:
            out["job_finished_to_first_prediction_s"] = max(0.0, seen["t_answer"] - finished)
            out["job_finished_to_first_request_sent_s"] = max(0.0, seen["t"] - finished)
        return out

    return {"jobs": [asyncio.run(one(v)) for v in (1, 2)]}
