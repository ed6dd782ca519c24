"""Load with a flooding key: `python -m bench.load [--seconds 60] [--repo DIR] [--out bench/results]`.

A real uvicorn server (`prompthub serve` on 127.0.0.1, API keys required, the embedded worker on) on
the real all-MiniLM-L6-v2 backbone, with hundreds of task names (some unknown: 404), while a
training job runs. Phase 1 (the first quarter): a well-behaved key sends short inputs. Phase 2: a
second key floods with long inputs (32 texts of ~19,000 characters a request, many connections).
Measured: the well-behaved key's p99 latency (per phase and in 2-second windows), the requests held
by the server (sent, not yet answered), 429s, other statuses, and the server's memory (RSS of the
server and its worker, sampled every 0.5 s). Writes bench/results/load-flood.{json,png}.

`--repo DIR` serves the code of another checkout (e.g. an older commit, for a before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
LONG = ("the customer wrote a very long complaint about the card " * 340)[:19_000]
SHORT = ["where is my card", "how do I top up", "I lost my phone", "refund please", "exchange rate?"]
RECORDS = [
    {"text": f"{w} film {i}", "label": lab}
    for i in range(16)
    for w, lab in (("great", "pos"), ("bad", "neg"))
]


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out = [pid]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def p99(xs: list[float]) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def setup(work: Path, n_tasks: int) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Database, store with `n_tasks` task names, keys; returns (env, tokens, names)."""
    from app.config import Settings
    from app.db import keys
    from app.db.session import get_sessionmaker, run_migrations
    from app.engine.backbone import load_backbone
    from app.engine.checkpoint import checkpoint_bytes
    from app.engine.model import TaskModel, TaskSpec
    from app.jobs.process import settings_env
    from app.store import PromptStore

    settings = Settings(
        database_url=f"sqlite:///{work / 'hub.db'}",
        store_dir=str(work / "store"),
        data_dir=str(work / "data"),
        auth="required",
        log_level="warning",
        job_stale_s=120.0,
    )
    run_migrations(settings.database_url)
    bb = load_backbone(settings.backbone)
    store = PromptStore(settings.store_dir)
    blobs = []
    for seed in range(3):
        import torch

        torch.manual_seed(seed)
        spec = TaskSpec(
            task_type="classification", labels=["a", "b", "c", "d"], prefix_length=16, max_length=128
        )
        blobs.append(checkpoint_bytes(TaskModel(spec, bb).to_serving(), bb, {"source": "bench"}))
    names = [f"task-{i:03d}" for i in range(n_tasks)]
    for i, name in enumerate(names):
        store.write_version(name, 1, blobs[i % 3])
    with get_sessionmaker(settings.database_url)() as s:
        tokens = {k: keys.create_key(s, name=k, scopes=["admin"])[1] for k in ("good", "flood", "trainer")}
    env = {**os.environ, **settings_env(settings), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return env, tokens, names


def run(
    seconds: float = 60.0,
    *,
    repo: Path = ROOT,
    n_tasks: int = 300,
    good_clients: int = 4,
    flood_clients: int = 24,
    out: Path | None = None,
    label: str = "after",
) -> dict:
    from app.api.server import serve_command  # noqa: F401  (the server module exists)

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    env, tokens, names = setup(work, n_tasks)
    unknown = [f"nope-{i:03d}" for i in range(n_tasks // 5)]
    port = _free_port()
    env["PYTHONPATH"] = str(repo)
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=str(repo),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, work / "server.log")
        return _measure(base, proc, tokens, names, unknown, seconds, good_clients, flood_clients, out, label)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")


def _measure(base, proc, tokens, names, unknown, seconds, good_clients, flood_clients, out, label) -> dict:
    records: list[tuple[str, float, float, int]] = []  # (key, start, latency, status)
    held = [0]
    held_samples: list[tuple[float, int]] = []
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    flood_at = seconds / 4

    def sampler() -> None:
        while not stop.wait(0.5):
            t = time.monotonic() - t0
            rss.append((t, sum(_rss_kb(p) for p in _tree(proc.pid)) / 1024))
            held_samples.append((t, held[0]))

    async def one(c: httpx.AsyncClient, key: str, url: str, body: dict) -> int:
        start = time.monotonic()
        held[0] += 1
        try:
            r = await c.post(url, json=body, headers={"Authorization": f"Bearer {tokens[key]}"})
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        finally:
            held[0] -= 1
        records.append((key, start - t0, time.monotonic() - start, status))
        return status

    async def good(c: httpx.AsyncClient, k: int, end: float) -> None:
        rng = random.Random(k)
        while time.monotonic() < end:
            name = rng.choice(unknown) if rng.random() < 0.1 else rng.choice(names)
            await one(c, "good", f"/predict/{name}", {"inputs": rng.sample(SHORT, 2)})
            await asyncio.sleep(rng.uniform(0.05, 0.15))

    async def flood(c: httpx.AsyncClient, k: int, end: float) -> None:
        rng = random.Random(1000 + k)
        await asyncio.sleep(max(0.0, t0 + flood_at - time.monotonic()))
        while time.monotonic() < end:
            status = await one(c, "flood", f"/predict/{rng.choice(names)}", {"inputs": [LONG] * 32})
            if status == 429:
                await asyncio.sleep(0.05)  # an impolite client: retries almost at once

    async def main() -> str:
        limits = httpx.Limits(max_connections=good_clients + flood_clients + 4)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:
            train = {
                "task": "trained-during-load",
                "task_type": "classification",
                "train": {"records": RECORDS},
                "hyperparameters": {"epochs": 2, "batch_size": 8, "max_length": 32},
            }
            r = await c.post("/train", json=train, headers={"Authorization": f"Bearer {tokens['trainer']}"})
            job_id = r.json().get("job_id", "")
            end = time.monotonic() + seconds
            await asyncio.gather(
                *(good(c, k, end) for k in range(good_clients)),
                *(flood(c, k, end) for k in range(flood_clients)),
            )
            j = await c.get(f"/jobs/{job_id}", headers={"Authorization": f"Bearer {tokens['trainer']}"})
            return j.json().get("state", "?") if j.status_code == 200 else f"http {j.status_code}"

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    try:
        job_state = asyncio.run(main())
    finally:
        stop.set()
        th.join(5)
    good_ok = [(s, lat) for k, s, lat, st in records if k == "good" and st in (200, 404)]
    quiet = [lat for s, lat in good_ok if s < flood_at]
    flooded = [lat for s, lat in good_ok if s >= flood_at + 2]
    statuses = Counter(f"{k} {st}" for k, _, _, st in records)
    windows = []
    for w in range(int(seconds // 2)):
        lat = [x for s, x in good_ok if 2 * w <= s < 2 * w + 2]
        if lat:
            windows.append((2 * w + 1.0, p99(lat)))
    rate_429 = Counter(int(s) for k, s, _, st in records if st == 429)
    result = {
        "label": label,
        "seconds": seconds,
        "tasks": len(names),
        "unknown_names": len(unknown),
        "good_clients": good_clients,
        "flood_clients": flood_clients,
        "flood_starts_s": flood_at,
        "statuses": dict(sorted(statuses.items())),
        "good_p99_quiet_s": p99(quiet),
        "good_p99_flood_s": p99(flooded),
        "good_requests": len(good_ok),
        "flood_429": statuses.get("flood 429", 0),
        "errors_5xx_or_transport": sum(
            n for k, n in statuses.items() if k.split()[1] in ("0", "500", "502", "503", "504")
        ),
        "max_requests_held": max((h for _, h in held_samples), default=0),
        "rss_mib_max": round(max((m for _, m in rss), default=0.0), 1),
        "rss_mib_first_after_flood": round(next((m for t, m in rss if t >= flood_at + 5), 0.0), 1),
        "rss_mib_last": round(rss[-1][1], 1) if rss else 0.0,
        "training_job": job_state,
        "series": {
            "good_p99_2s": windows,
            "held": held_samples,
            "rss_mib": rss,
            "flood_429_per_s": sorted(rate_429.items()),
        },
    }
    if out is not None:
        write(result, Path(out))
    return result


def write(result: dict, out: Path) -> tuple[Path, Path]:
    from bench.png import chart

    out.mkdir(parents=True, exist_ok=True)
    stem = f"load-flood-{result['label']}"
    js = out / f"{stem}.json"
    js.write_text(json.dumps(result, indent=1) + "\n")
    s = result["series"]
    mark = [(result["flood_starts_s"], "FLOOD STARTS")]
    png = chart(
        [
            {
                "title": "P99 LATENCY OF THE WELL-BEHAVED KEY (S, 2 S WINDOWS)",
                "series": [("GOOD KEY P99", s["good_p99_2s"])],
                "marks": mark,
            },
            {
                "title": "REQUESTS HELD BY THE SERVER (SENT, NOT ANSWERED)",
                "series": [("HELD", s["held"])],
                "marks": mark,
            },
            {
                "title": "429 ANSWERS TO THE FLOODING KEY PER SECOND",
                "series": [
                    ("FLOOD 429/S", [(float(a), float(b)) for a, b in s["flood_429_per_s"]] or [(0.0, 0.0)])
                ],
                "marks": mark,
            },
            {
                "title": "SERVER + WORKER RSS (MIB), TRAINING JOB RUNNING",
                "series": [("RSS MIB", s["rss_mib"])],
                "marks": mark,
            },
        ],
        f"PROMPTHUB LOAD ({result['label']}): MINILM, {result['tasks']} TASKS, 1 KEY FLOODS",
    )
    path = out / f"{stem}.png"
    path.write_bytes(png)
    return js, path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose server is measured")
    ap.add_argument("--label", default="after")
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    result = run(args.seconds, repo=args.repo, n_tasks=args.tasks, out=args.out, label=args.label)
    print(json.dumps({k: v for k, v in result.items() if k != "series"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
