"""Load on a real server (uvicorn on 127.0.0.1, tiny random backbone, API keys required): many
concurrent clients for a bounded time. No 5xx, no transport error, nothing but 200 (and documented
429s) for good requests, the expected 401/403/422 for bad ones, and the server's memory flat."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.db import keys
from app.db.session import get_sessionmaker, run_migrations
from tests.helpers import free_port, seed_store, start_server, wait_ready

TEXTS = ["good", "a much longer sentence with several words in it", "Ada lives in Paris", "no", "meh " * 20]
QA = {"question": "Who wrote it?", "context": "Jane Austen wrote it in 1813 in Hampshire."}


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _request(rng: random.Random) -> tuple[str, str, dict, str, tuple[int, ...]]:
    """(kind, method, kwargs, key, expected statuses)."""
    x = rng.random()
    if x < 0.85:
        task = rng.choice(["sentiment", "ner", "qa"])
        n = rng.randint(1, 4)
        inputs = [QA] * n if task == "qa" else [rng.choice(TEXTS) for _ in range(n)]
        return "predict", "POST", {"url": f"/predict/{task}", "json": {"inputs": inputs}}, "good", (200, 429)
    if x < 0.90:
        return "read", "GET", {"url": rng.choice(["/tasks", "/tasks/sentiment", "/healthz"])}, "good", (200,)
    if x < 0.93:
        return "bad-key", "POST", {"url": "/predict/sentiment", "json": {"inputs": ["x"]}}, "bad", (401,)
    if x < 0.96:
        return "bad-scope", "POST", {"url": "/predict/ner", "json": {"inputs": ["x"]}}, "limited", (403,)
    bad = rng.choice([{"inputs": []}, {"inputs": [123]}, {"input": ["x"]}, {"inputs": ["x"], "version": 0}])
    return "bad-body", "POST", {"url": "/predict/sentiment", "json": bad}, "good", (422,)


def run_load(
    base: str, tokens: dict[str, str], pid: int, *, clients: int, seconds: float, think: float
) -> dict:
    statuses: Counter[str] = Counter()
    unexpected: list[str] = []
    errors: list[str] = []
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.wait(0.5):
            kb = rss_kb(pid)
            if kb:
                samples.append((time.monotonic() - t0, kb))

    async def client(k: int, c: httpx.AsyncClient, deadline: float) -> None:
        rng = random.Random(k)
        await asyncio.sleep(rng.uniform(0, think))  # spread the start
        while time.monotonic() < deadline:
            kind, method, kw, key, expected = _request(rng)
            headers = {"Authorization": f"Bearer {tokens[key]}"}
            try:
                r = await c.request(method, headers=headers, **kw)
            except httpx.HTTPError as e:
                errors.append(f"{kind}: {type(e).__name__}: {e}")
                continue
            statuses[f"{kind} {r.status_code}"] += 1
            if r.status_code not in expected:
                unexpected.append(f"{kind} {kw['url']} -> {r.status_code} {r.text[:200]}")
            await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))

    async def main() -> None:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(client(k, c, deadline) for k in range(clients)))

    t = threading.Thread(target=sampler, daemon=True)
    t.start()
    start = time.monotonic()
    try:
        asyncio.run(main())
    finally:
        stop.set()
        t.join(5)
    elapsed = time.monotonic() - start
    total = sum(statuses.values())
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": total,
        "rps": round(total / elapsed, 1),
        "statuses": dict(sorted(statuses.items())),
        "unexpected": unexpected[:20],
        "errors": errors[:20],
        "error_count": len(errors),
        "rss_samples": samples,
    }


def rss_flat(
    samples: list[tuple[float, int]], seconds: float, warmup_frac: float = 0.2
) -> tuple[float, float]:
    """(median RSS of the first quarter after warm-up, of the last quarter), in MiB."""
    after = [kb for t, kb in samples if t >= warmup_frac * seconds]
    q = max(1, len(after) // 4)
    return statistics.median(after[:q]) / 1024, statistics.median(after[-q:]) / 1024


@pytest.fixture
def load_server(tmp_path, sqlite_url, tiny_backbone_dir):
    settings = Settings(
        database_url=sqlite_url,
        store_dir=str(tmp_path / "store"),
        data_dir=str(tmp_path / "data"),
        backbone=str(tiny_backbone_dir),
        port=free_port(),
        auth="required",
        log_level="warning",
    )
    run_migrations(sqlite_url)
    seed_store(settings, tiny_backbone_dir, ["sentiment", "ner", "qa"])
    with get_sessionmaker(sqlite_url)() as s:
        tokens = {
            "good": keys.create_key(s, name="load", scopes=["predict"])[1],
            "limited": keys.create_key(s, name="limited", scopes=["predict"], tasks=["sentiment"])[1],
        }
    tokens["bad"] = "ph_" + "x" * 43
    log = tmp_path / "server.log"
    proc = start_server(settings, log, worker=False)
    base = f"http://127.0.0.1:{settings.port}"
    try:
        wait_ready(base, proc, log)
        yield base, tokens, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
            proc.wait(30)


def _check(result: dict, proc, log: Path, seconds: float) -> None:
    samples = result.pop("rss_samples")
    first, last = rss_flat(samples, seconds)
    result["rss_mib_first_quarter"] = round(first, 1)
    result["rss_mib_last_quarter"] = round(last, 1)
    print(f"\nload: {result}")
    assert proc.poll() is None, log.read_text()[-3000:]
    assert result["error_count"] == 0, result["errors"]
    assert not result["unexpected"], result["unexpected"]
    assert not any(k.endswith((" 500", " 502", " 503", " 504")) for k in result["statuses"])
    assert result["statuses"].get("predict 200", 0) > 0
    assert last <= first * 1.15, f"RSS grew from {first:.1f} to {last:.1f} MiB"


def test_load_short(load_server):
    base, tokens, proc, log = load_server
    result = run_load(base, tokens, proc.pid, clients=100, seconds=10, think=1.0)
    _check(result, proc, log, 10)


@pytest.mark.slow
def test_load_200_clients_60s(load_server):
    base, tokens, proc, log = load_server
    result = run_load(base, tokens, proc.pid, clients=200, seconds=60, think=1.0)
    _check(result, proc, log, 60)


@pytest.mark.slow  # ~1.5 min: the real MiniLM backbone, a real server, 300 task names, a training job
def test_load_minilm_flooding_key(tmp_path):
    """Issue 12, item 14 (and 10): one key floods with 32 texts of 19,000 characters a request over 24
    connections while a well-behaved key sends short inputs to 300 task names (a fifth of its
    requests to unknown names) and a training job runs. The flooding key is refused with 429, the
    well-behaved key stays served (on the code before, its p99 went from 0.44 s to 34 s, with no
    429), nothing 5xx, memory bounded. The same code (bench.load) writes the figure."""
    from bench.load import run

    result = run(40.0, n_tasks=300, out=tmp_path, label="test")
    print({k: v for k, v in result.items() if k != "series"})
    assert result["errors_5xx_or_transport"] == 0, result["statuses"]
    assert set(result["statuses"]) <= {"good 200", "good 404", "flood 200", "flood 429"}, result["statuses"]
    assert result["flood_429"] > 0
    assert result["statuses"].get("good 404", 0) > 0 and result["statuses"].get("good 200", 0) > 20
    assert result["good_p99_flood_s"] is not None and result["good_p99_flood_s"] < 15.0
    assert result["rss_mib_max"] < 3000
    assert result["training_job"] in ("running", "succeeded")
    assert (tmp_path / "load-flood-test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
