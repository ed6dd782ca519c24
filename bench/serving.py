"""Serving benchmark: the real PromptHub server over HTTP against the bare backbone and PEFT.

    python -m bench.serving                      # default: 1, 8, 64, 1,000 tasks (< 15 min here)
    python -m bench.serving --tasks 1,8,64,1000,10000 --memory-tasks 1,100,1000,10000
    python -m bench.serving --quick              # tiny smoke run (tests/bench)
    python -m bench.serving --device cuda        # PROMPTHUB_DEVICES=cuda for the server

One run does everything side by side, on one machine, in one go:

* a temporary prompt store + SQLite database with N synthetic P-Tuning v2 tasks (MiniLM,
  16-token prefix at every layer, random K/V and a random 4-label head each: the bytes and the
  compute of a real task; accuracy is irrelevant here), a `bare` task (a head, no prefix:
  baseline (a), the same server, batcher and policy with the prefix taken away) and a few
  never-requested `cold` tasks;
* the PromptHub server (`python -m app.cli serve`, as a user runs it) and the PEFT baseline
  server (bench/peft_server.py: PrefixTuning adapters, `set_adapter` per request);
* memory: server RSS with 1, 100, 1,000 (, 10,000) tasks loaded; bytes per task on disk and on
  the device; cold-load time; then throughput rounds (every configuration once per round, the
  order rotated each round, `--repeats` rounds; medians and ratios against the bare backbone
  measured in the same rounds); last, time from a training job's success to the first
  prediction served by its new version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from bench.common import (
    REPO,
    ServerProc,
    encode_request,
    fire,
    fmt,
    free_port,
    machine_info,
    md_table,
    median,
    ratio,
    rss_bytes,
    run_load,
    start_server,
    synthetic_texts,
    wait_http,
    write_results,
)

MIXES = ("one", "uniform", "zipf", "switch")
NUM_LABELS = 4


# ----------------------------------------------------------------------------- store


def task_name(i: int) -> str:
    return f"t{i:05d}"


def build_store(root: Path, backbone, n_tasks: int, n_cold: int, prefix_length: int, seed: int = 0) -> dict:
    """Synthetic tasks written straight into a store folder and registered in a SQLite DB.

    Each task has its own random K/V and head (no shared files: the disk and memory figures are
    real). Files are written without the store's per-file fsync (bounded set-up time)."""
    import torch

    from app.db import repo
    from app.db.session import get_sessionmaker, run_migrations
    from app.engine.checkpoint import checkpoint_bytes, sha256_bytes
    from app.engine.heads import build_head
    from app.engine.model import ServingTask, TaskSpec

    store = root / "store"
    url = f"sqlite:///{root / 'hub.db'}"
    run_migrations(url)
    maker = get_sessionmaker(url)
    labels = [f"l{i}" for i in range(NUM_LABELS)]
    spec = TaskSpec(task_type="classification", labels=labels, prefix_length=prefix_length).validate(
        backbone.num_layers
    )
    head = build_head(spec, backbone).eval()
    layer_mask = torch.ones(backbone.num_layers, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    names = [task_name(i) for i in range(n_tasks)] + [f"c{i:04d}" for i in range(n_cold)] + ["bare"]
    sizes: dict[str, int] = {}
    t0 = time.perf_counter()
    with maker() as s:
        for k, name in enumerate(names):
            with torch.no_grad():
                head.classifier.weight.normal_(0, 0.05, generator=g)
                head.classifier.bias.zero_()
            kv = None
            if name != "bare":
                kv = torch.randn(backbone.num_layers, 2, prefix_length, backbone.kv_size, generator=g) * 0.5
            task = ServingTask(spec=spec, head=head, kv=kv, layer_mask=layer_mask if kv is not None else None)
            data = checkpoint_bytes(task, backbone, {"source": "bench", "metrics": {}, "training": {}})
            digest = sha256_bytes(data)
            d = store / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "v0001.safetensors").write_bytes(data)
            sidecar = {
                "task": name,
                "version": 1,
                "file": "v0001.safetensors",
                "sha256": digest,
                "size_bytes": len(data),
                "metadata": {"source": "bench"},
            }
            (d / "v0001.json").write_text(json.dumps(sidecar) + "\n")
            sizes[name] = len(data)
            repo.add_version(
                s,
                name=name,
                task_type="classification",
                labels=labels,
                file=f"{name}/v0001.safetensors",
                sha256=digest,
                size_bytes=len(data),
                spec=spec.to_dict(),
                metrics={},
                training={},
                source="bench",
                activate=True,
                version=1,
            )
            if k % 500 == 499:
                s.commit()
        s.commit()
    disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return {
        "url": url,
        "store": str(store),
        "names": names,
        "setup_s": time.perf_counter() - t0,
        "checkpoint_bytes": sizes[task_name(0)] if n_tasks else None,
        "bare_checkpoint_bytes": sizes["bare"],
        "store_disk_bytes": disk,
    }


def device_bytes(backbone, store: Path, name: str) -> dict:
    """Bytes of one loaded task (ServingTask.nbytes: K/V + head) and the cold-load time in process."""
    from app.engine.checkpoint import load_checkpoint_bytes, sha256_bytes

    path = store / name / "v0001.safetensors"
    data = path.read_bytes()
    sha = sha256_bytes(data)
    times = []
    task = None
    for _ in range(30):
        t0 = time.perf_counter()
        data = path.read_bytes()
        task = load_checkpoint_bytes(data, backbone, expected_sha256=sha)
        times.append(time.perf_counter() - t0)
    kv = task.kv.numel() * task.kv.element_size()
    return {
        "nbytes": task.nbytes(),
        "kv_bytes": kv,
        "head_bytes": task.nbytes() - kv,
        "load_ms_in_process": median(times) * 1000,
    }


# ----------------------------------------------------------------------------- request mixes


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
    server: str  # "prompthub" | "bare" | "peft"
    n_tasks: int
    mix: str

    @property
    def key(self) -> str:
        return f"{self.server}/{self.n_tasks}/{self.mix}"


def batch_stats(port: int) -> tuple[float, float]:
    import httpx

    s = c = 0.0
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return 0.0, 0.0
    for line in text.splitlines():
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


def version_phase(port: int, timeout_s: float = 300.0) -> dict:
    """Train a task through the API twice; time from each job's success to its first prediction."""
    import asyncio
    from datetime import datetime

    import httpx

    records = [
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
    hp = {"max_steps": 10, "epochs": 10, "batch_size": 8, "prefix_length": 8, "lr": 0.02, "max_length": 32}

    async def one(version: int) -> dict:
        body = {
            "task": "fresh",
            "task_type": "classification",
            "train": {"records": records},
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


# ----------------------------------------------------------------------------- main


def parse_counts(s: str) -> list[int]:
    return sorted({int(x) for x in s.split(",") if x.strip()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="1,8,64,1000", help="task counts for the throughput table")
    p.add_argument("--mixes", default=",".join(MIXES))
    p.add_argument("--memory-tasks", default="1,100,1000", help="loaded-task counts for the memory table")
    p.add_argument("--clients", type=int, default=16, help="concurrent keep-alive HTTP clients")
    p.add_argument("--texts", type=int, default=4, help="texts per request")
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per configuration")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all configurations")
    p.add_argument("--prefix-length", type=int, default=16)
    p.add_argument("--peft", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--peft-max-tasks", type=int, default=1000, help="largest task count loaded into PEFT")
    p.add_argument("--cold", type=int, default=10, help="never-requested tasks for the cold-load probe")
    p.add_argument("--no-version-probe", action="store_true", help="skip the train-then-serve timing")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-batch-size", type=int, default=None, help="PROMPTHUB_MAX_BATCH_SIZE (default: settings)"
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=None, help="PROMPTHUB_MAX_WAIT_MS (default: settings)"
    )
    p.add_argument("--quick", action="store_true", help="tiny run for the smoke test (no meaningful timings)")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--name", default="serving", help="results file stem")
    p.add_argument("--workdir", default=None, help="where the temporary store goes (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary store")
    p.add_argument(
        "--ablation",
        action="append",
        default=[],
        metavar="NAME:ARGS",
        help="also run the server with bench.hub_server ARGS (e.g. 'no-buckets:--bucket-overhead-tokens inf'), "
        "measured side by side on --ablation-tasks; repeatable",
    )
    p.add_argument(
        "--ablation-tasks", default="1,64", help="task counts (mix one / uniform) for ablation servers"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS for every server (default: torch's)"
    )
    p.add_argument(
        "--profile",
        default=None,
        help="py-spy record the PromptHub server during the run into this file (speedscope json)",
    )
    args = p.parse_args(argv)

    if args.quick:
        args.tasks, args.memory_tasks, args.mixes = "1,8", "1,8", "one,uniform"
        args.duration, args.warmup, args.repeats, args.clients, args.cold = 0.5, 0.2, 1, 4, 2
        args.peft_max_tasks = 8
        args.no_version_probe = True
        args.threads = args.threads or 1
    counts = parse_counts(args.tasks)
    mem_counts = parse_counts(args.memory_tasks)
    mixes = [m for m in args.mixes.split(",") if m]
    n_tasks = max(counts + mem_counts)
    want_peft = args.peft != "off"
    if want_peft:
        try:
            import peft  # noqa: F401
        except ImportError:
            if args.peft == "on":
                raise
            print("peft is not installed: the PEFT baseline is skipped (pip install peft)", file=sys.stderr)
            want_peft = False

    import torch

    torch.set_num_threads(1)  # the bench process only builds files and sends requests
    from app.engine.backbone import load_backbone

    machine = machine_info(args.device)
    work = Path(tempfile.mkdtemp(prefix="prompthub-bench-", dir=args.workdir))
    servers: list[ServerProc] = []
    profiler = None
    t_run = time.perf_counter()
    try:
        print(f"[setup] store with {n_tasks} tasks in {work}", flush=True)
        bb = load_backbone("all-MiniLM-L6-v2")
        store = build_store(work, bb, n_tasks, args.cold, args.prefix_length)
        per_task = device_bytes(bb, Path(store["store"]), task_name(0))
        print(
            f"[setup] {store['setup_s']:.1f}s, {store['store_disk_bytes'] / 2**20:.0f} MiB on disk",
            flush=True,
        )

        port = free_port()
        cache_bytes = max(536_870_912, int((n_tasks + args.cold + 16) * per_task["nbytes"] * 1.25))
        env = {
            "PROMPTHUB_DATABASE_URL": store["url"],
            "PROMPTHUB_STORE_DIR": store["store"],
            "PROMPTHUB_DATA_DIR": str(work / "datasets"),
            "PROMPTHUB_BACKBONE": "all-MiniLM-L6-v2",
            "PROMPTHUB_DEVICES": args.device,
            "PROMPTHUB_CACHE_BYTES": str(cache_bytes),
            "PROMPTHUB_EMBEDDED_WORKER": "false" if args.no_version_probe else "true",
            "PROMPTHUB_WORKER_POLL_S": "0.1",
            "PROMPTHUB_LOG_LEVEL": "warning",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if args.max_batch_size:
            env["PROMPTHUB_MAX_BATCH_SIZE"] = str(args.max_batch_size)
        if args.max_wait_ms is not None:
            env["PROMPTHUB_MAX_WAIT_MS"] = str(args.max_wait_ms)
        hub = start_server(
            "prompthub",
            ["-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env,
            work,
            port,
            work / "prompthub.log",
        )
        servers.append(hub)
        by_name: dict[str, ServerProc] = {"prompthub": hub, "bare": hub}
        ablations: list[str] = []
        for spec_ in args.ablation:
            aname, _, aargs = spec_.partition(":")
            aport = free_port()
            aenv = {**env, "PROMPTHUB_EMBEDDED_WORKER": "false"}
            asrv = start_server(
                aname,
                ["-m", "bench.hub_server", "--port", str(aport), *aargs.split()],
                {**aenv, "PYTHONPATH": str(REPO)},
                work,
                aport,
                work / f"{aname}.log",
            )
            servers.append(asrv)
            by_name[aname] = by_name[f"{aname}-bare"] = asrv
            ablations.append(aname)
        peft_srv = None
        peft_counts = [n for n in counts if n <= args.peft_max_tasks] if want_peft else []
        if peft_counts:
            pport = free_port()
            tasks_file = work / "peft_tasks.json"
            tasks_file.write_text(
                json.dumps(
                    {
                        "store": store["store"],
                        "prefix_length": args.prefix_length,
                        "tasks": [[task_name(i), 1] for i in range(max(peft_counts))],
                    }
                )
            )
            peft_srv = start_server(
                "peft",
                [
                    "-m",
                    "bench.peft_server",
                    "--tasks-file",
                    str(tasks_file),
                    "--port",
                    str(pport),
                    "--device",
                    args.device,
                ],
                {"PYTHONPATH": str(REPO), **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})},
                REPO,
                pport,
                work / "peft.log",
            )
            servers.append(peft_srv)
            by_name["peft"] = peft_srv
        t_ready = wait_http(hub, "/readyz", 900)
        print(f"[setup] prompthub ready in {t_ready:.1f}s", flush=True)
        for aname in ablations:
            wait_http(by_name[aname], "/readyz", 900)
            warm(
                by_name[aname].port,
                ["bare"] + [task_name(i) for i in range(max(parse_counts(args.ablation_tasks)))],
            )
        if peft_srv is not None:
            t_peft = wait_http(peft_srv, "/readyz", 1800)
            print(f"[setup] peft ready in {t_peft:.1f}s ({max(peft_counts)} adapters)", flush=True)
        if args.profile:
            import subprocess

            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(hub.pid),
                    "--format",
                    "speedscope",
                    "--output",
                    args.profile,
                    "--rate",
                    "100",
                    "--threads",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )

        warm(hub.port, ["bare"] * 8)
        memory = memory_phase(hub, mem_counts, per_task["nbytes"])
        memory["peft_rss_bytes"] = rss_bytes(peft_srv.pid) if peft_srv else None
        memory["peft_adapters"] = max(peft_counts) if peft_srv else None
        print(
            "[memory] "
            + ", ".join(f"{r['tasks']}: {r['rss_bytes'] / 2**20:.0f} MiB" for r in memory["rows"]),
            flush=True,
        )
        cold = cold_phase(hub.port, [f"c{i:04d}" for i in range(args.cold)])
        cold["load_ms_in_process"] = per_task["load_ms_in_process"]
        print(f"[cold] {cold}", flush=True)
        t_w = warm(hub.port, [task_name(i) for i in range(n_tasks)], clients=16)
        print(f"[warm] all {n_tasks} tasks in cache ({t_w:.1f}s)", flush=True)

        configs = [Config("bare", 1, "one")]
        for n in counts:
            for mix in mixes:
                if (n == 1) != (mix == "one"):
                    continue  # one task: only "one"; more tasks: the mixes that spread over them
                configs.append(Config("prompthub", n, mix))
                if n in peft_counts and mix in ("one", "uniform"):
                    configs.append(Config("peft", n, mix))
        if not any(c.server == "prompthub" and c.mix == "one" for c in configs) and "one" in mixes:
            configs.insert(1, Config("prompthub", 1, "one"))
        for aname in ablations:
            configs.append(Config(f"{aname}-bare", 1, "one"))
            for n in parse_counts(args.ablation_tasks):
                configs.append(Config(aname, n, "one" if n == 1 else "uniform"))
        bodies = make_bodies(args.texts)
        runs: dict[str, list[dict]] = {c.key: [] for c in configs}
        for r in range(args.repeats):
            order = configs[r % len(configs) :] + configs[: r % len(configs)]
            for cfg in order:
                bare_cfg = cfg.server.endswith("bare")
                names = ["bare"] if bare_cfg else [task_name(i) for i in range(cfg.n_tasks)]
                mix = Mix(cfg.mix, names, seed=r)
                srv = by_name[cfg.server]
                ours = cfg.server != "peft"
                b0 = batch_stats(srv.port) if ours else (0.0, 0.0)
                res = run_load(
                    srv.port, request_factory(mix, bodies), args.clients, args.duration, args.warmup
                )
                summ = res.summary(args.texts)
                if ours:
                    b1 = batch_stats(srv.port)
                    summ["mean_batch_rows"] = ratio(b1[0] - b0[0], b1[1] - b0[1])
                runs[cfg.key].append(summ)
                print(
                    f"[round {r + 1}/{args.repeats}] {cfg.key:24s} {summ['rps']:8.1f} req/s "
                    f"{summ['texts_per_s']:8.1f} texts/s p50 {fmt(summ['p50_ms'])} ms p99 {fmt(summ['p99_ms'])} ms"
                    + (f" errors {summ['errors']} {summ['sample_error']}" if summ["errors"] else ""),
                    flush=True,
                )

        versions = None
        if not args.no_version_probe:
            versions = version_phase(hub.port)
            print(f"[version] {versions}", flush=True)
        hub_rss_end = rss_bytes(hub.pid)
    finally:
        if profiler is not None:
            import signal as _signal

            profiler.send_signal(_signal.SIGINT)
            try:
                profiler.wait(60)
            except Exception:
                profiler.kill()
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ aggregate
    def agg(key: str) -> dict:
        rs = runs[key]
        return {
            "rps": median([x["rps"] for x in rs]),
            "texts_per_s": median([x["texts_per_s"] for x in rs]),
            "p50_ms": median([x["p50_ms"] for x in rs]),
            "p99_ms": median([x["p99_ms"] for x in rs]),
            "errors": sum(x["errors"] for x in rs),
            "mean_batch_rows": median([x.get("mean_batch_rows") for x in rs]),
            "repeats": rs,
        }

    bare = agg("bare/1/one")
    table = []
    for cfg in configs:
        a = agg(cfg.key)
        base = bare
        if cfg.server in ablations or cfg.server.endswith("-bare"):
            base = agg(f"{cfg.server.removesuffix('-bare')}-bare/1/one")
        row = {
            "server": cfg.server,
            "tasks": cfg.n_tasks,
            "mix": cfg.mix,
            **a,
            "vs_bare": ratio(a["rps"], base["rps"]),
            "vs_shipped_bare": ratio(a["rps"], bare["rps"]),
        }
        if cfg.server == "prompthub":
            pk = f"peft/{cfg.n_tasks}/{'one' if cfg.mix == 'one' else 'uniform'}"
            if pk in runs and cfg.mix in ("one", "uniform"):
                row["vs_peft"] = ratio(a["rps"], agg(pk)["rps"])
        table.append(row)

    def find(server, n, mix):
        return next((r for r in table if (r["server"], r["tasks"], r["mix"]) == (server, n, mix)), None)

    targets = {}
    u64 = find("prompthub", 64, "uniform")
    if u64:
        targets["uniform_64_vs_bare"] = {"value": u64["vs_bare"], "target": 0.9}
    big = [r for r in table if r["server"] == "prompthub" and r["tasks"] >= 10000 and r["mix"] == "uniform"]
    if big:
        targets["uniform_10000_vs_bare"] = {"value": big[0]["vs_bare"], "target": 0.85}
    vp = [r.get("vs_peft") for r in table if r.get("vs_peft") is not None and r["mix"] == "uniform"]
    if vp:
        targets["vs_peft_switching_min"] = {"value": min(vp), "target": 10.0}
    if versions:
        lat = [j.get("job_finished_to_first_prediction_s") for j in versions["jobs"]]
        targets["new_version_served_s_max"] = {
            "value": max((x for x in lat if x is not None), default=None),
            "target": 1.0,
            "lower_is_better": True,
        }
    mem_rows = memory["rows"]
    if mem_rows:
        targets["memory_within_backbone_plus_task_bytes"] = {
            "value": all(r["within_budget"] for r in mem_rows),
            "target": True,
        }

    result = {
        "benchmark": "serving",
        "command": "python -m bench.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "settings": {k: v for k, v in vars(args).items()},
        "server": {"cache_bytes": cache_bytes, "rss_end_bytes": hub_rss_end},
        "wall_s": time.perf_counter() - t_run,
        "per_task": {
            "disk_bytes": store["checkpoint_bytes"],
            "bare_disk_bytes": store["bare_checkpoint_bytes"],
            "device_bytes": per_task["nbytes"],
            "kv_bytes": per_task["kv_bytes"],
            "head_bytes": per_task["head_bytes"],
            "store_disk_bytes_all": store["store_disk_bytes"],
            "store_setup_s": store["setup_s"],
        },
        "cold": cold,
        "memory": memory,
        "throughput": table,
        "version_latency": versions,
        "targets": targets,
    }
    md = render_markdown(result)
    jp, mp = write_results(args.name, result, md, Path(args.out) if args.out else None)
    print()
    print(md)
    print(f"\nwrote {jp} and {mp}")
    return 0


def render_markdown(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, device {m['device']}, "
        f"torch {m['torch']}, transformers {m.get('transformers')}, peft {m.get('peft')}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])} (shared machine)  ",
        f"Load: {s['clients']} concurrent keep-alive HTTP clients on loopback, {s['texts']} texts a request, "
        f"{s['duration']} s measured per configuration after {s['warmup']} s warm-up, {s['repeats']} rounds "
        "(order rotated); medians over rounds; ratios against the bare backbone measured in the same rounds.",
        "",
        "## Throughput and latency",
        "",
    ]
    rows = []
    for r in res["throughput"]:
        rows.append(
            [
                r["server"],
                fmt(r["tasks"]),
                r["mix"],
                fmt(r["rps"]),
                fmt(r["texts_per_s"]),
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                fmt(r["mean_batch_rows"]),
                fmt(r["vs_bare"], 2),
                fmt(r.get("vs_peft"), 1),
                r["errors"],
            ]
        )
    lines.append(
        md_table(
            [
                "server",
                "tasks",
                "mix",
                "req/s",
                "texts/s",
                "p50 ms",
                "p99 ms",
                "rows/forward",
                "x bare",
                "x PEFT",
                "errors",
            ],
            rows,
        )
    )
    lines += [
        "",
        "`bare`: the same server, batcher and policy serving a task with no prefix (a head only): the "
        "ceiling of this design. `peft`: peft PrefixTuning adapters, `set_adapter` per request "
        "(bench/peft_server.py). Mixes: `one` task only; `uniform` over the tasks; `zipf` (s=1.1); "
        "`switch`: round robin, every request a different task than the last.",
        "",
    ]
    pt = res["per_task"]
    mem = res["memory"]
    lines += [
        "## Memory",
        "",
        f"Per task: {fmt(pt['disk_bytes'])} bytes on disk (safetensors with metadata; "
        f"{fmt(pt['bare_disk_bytes'])} for a head-only task), {fmt(pt['device_bytes'])} bytes on the device "
        f"(K/V {fmt(pt['kv_bytes'])} + head {fmt(pt['head_bytes'])}).",
        "",
    ]
    mrows = [
        [
            fmt(r["tasks"]),
            fmt(r["rss_bytes"] / 2**20),
            fmt(r["over_backbone_bytes"] / 2**20),
            fmt(r["per_task_bytes"] / 1000, 1),
            fmt(r["budget_bytes"] / 2**20),
            "yes" if r["within_budget"] else "NO",
        ]
        for r in mem["rows"]
    ]
    lines.append(
        md_table(
            [
                "tasks loaded",
                "server RSS MiB",
                "over backbone MiB",
                "kB per task",
                "budget MiB (backbone + tasks' bytes)",
                "within (64 MiB slack)",
            ],
            mrows,
        )
    )
    lines += [
        "",
        f"Server RSS with the backbone only (after warm-up requests): "
        f"{fmt(mem['backbone_rss_bytes'] / 2**20)} MiB.",
    ]
    if mem.get("peft_rss_bytes"):
        lines.append(
            f"PEFT server RSS with {fmt(mem['peft_adapters'])} adapters: "
            f"{fmt(mem['peft_rss_bytes'] / 2**20)} MiB."
        )
    c = res["cold"]
    lines += [
        "",
        "## Cold load and new versions",
        "",
        f"Cold prefix load: {fmt(c.get('load_ms_in_process'), 2)} ms in process (read + sha256 + parse + "
        f"place); over HTTP the first request to a task takes {fmt(c.get('first_request_ms'), 1)} ms against "
        f"{fmt(c.get('warm_request_ms'), 1)} ms once cached (n={c.get('n')}).",
    ]
    if res.get("version_latency"):
        for j in res["version_latency"]["jobs"]:
            lines.append(
                f"- job for version {j['version']}: {j['state']}, first prediction on the new version "
                f"{fmt(j.get('job_finished_to_first_prediction_s'), 3)} s after the job's finished_at "
                f"(predictions polled every ~10 ms)"
            )
    lines += ["", "## Targets", ""]
    trows = [
        [k, fmt(v["value"], 2) if isinstance(v["value"], float) else v["value"], v["target"]]
        for k, v in res["targets"].items()
    ]
    lines.append(md_table(["target", "measured", "goal"], trows))
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
