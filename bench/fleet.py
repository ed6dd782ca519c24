"""Fleet bench (issue 13): not a timed test; `python -m bench.fleet [--quick]`.

1. database queries per prediction on one replica (PostgreSQL), counted on the app's engine while
   predictions run back to back: the version cache off (PROMPTHUB_VERSION_CACHE_TTL_S=0, the
   behaviour before) and on (the default TTL, NOTIFY listener running);
2. predictions through nginx with 1 and then 2 API replicas (scripts/fleet.sh, the real MiniLM
   unless --backbone): requests/s and latency, same clients and texts;
3. time from a job's success (its row's finished_at) to the first prediction of the new version on
   every replica, each replica polled by its own thread.
Results: bench/results/fleet.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path

from bench.common import REPO, encode_request, fmt, machine_info, md_table, run_load, save_results

sys.path.insert(0, str(REPO))

RECORDS = [
    {"text": t, "label": lab}
    for t, lab in [
        ("I loved this movie, wonderful acting", "pos"),
        ("a great and touching story", "pos"),
        ("brilliant, funny and warm", "pos"),
        ("terrible plot and bad acting", "neg"),
        ("boring, I fell asleep", "neg"),
        ("an awful waste of time", "neg"),
    ]
]
HP = {"max_steps": 4, "epochs": 4, "batch_size": 4, "prefix_length": 4, "max_length": 32}


# ------------------------------------------------------------------------ 1. queries per prediction


def queries_per_prediction(pg: str, seconds: float, clients: int = 8) -> list[dict]:
    """In one process: an app on a fresh PostgreSQL database, a tiny backbone, `clients` threads
    predicting back to back through the ASGI app for `seconds`; statements counted on the app's
    engine. The TTL bounds lookups to 2 a second per task: below that prediction rate every
    prediction is a miss, above it the share of misses falls with the rate."""
    import psycopg
    from sqlalchemy import event

    from app.config import Settings
    from app.db.session import dispose_engines, get_sessionmaker, run_migrations
    from app.main import create_app, make_hub
    from tests.helpers import local_client, make_tiny_backbone, publish_task

    backbone = make_tiny_backbone()
    rows = []
    configs = (
        ("before: no cache (TTL 0)", 0.0),
        ("after: cache + NOTIFY, TTL 0.5 s (default)", 0.5),
        ("after: cache + NOTIFY, TTL 60 s (NOTIFY only)", 60.0),
    )
    for label, ttl in configs:
        db = f"prompthub_bench_{random.randrange(1 << 30):x}"
        with psycopg.connect(f"{pg}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{db}"')
        url = f"{pg}/{db}"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                settings = Settings(
                    database_url=url,
                    store_dir=f"{tmp}/store",
                    data_dir=f"{tmp}/data",
                    embedded_worker=False,
                    version_cache_ttl_s=ttl,
                )
                run_migrations(url)
                hub = make_hub(settings, backbones=[backbone])
                publish_task(settings, backbone, "bench", seed=1)
                engine = get_sessionmaker(url).kw["bind"]
                count = [0]
                done = [0]
                lock = threading.Lock()

                def on(*_a, _count=count):
                    _count[0] += 1

                with local_client(create_app(settings, hub)) as c:
                    c.post("/predict/bench", json={"inputs": ["warm"]})
                    event.listen(engine, "before_cursor_execute", on)
                    t_end = time.monotonic() + seconds

                    def run(_c=c, _t_end=t_end, _done=done, _lock=lock) -> None:
                        while time.monotonic() < _t_end:
                            assert (
                                _c.post("/predict/bench", json={"inputs": ["some text"]}).status_code == 200
                            )
                            with _lock:
                                _done[0] += 1

                    threads = [threading.Thread(target=run) for _ in range(clients)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    event.remove(engine, "before_cursor_execute", on)
                hub.close()
                n = done[0]
                rows.append(
                    {
                        "config": label,
                        "clients": clients,
                        "predictions": n,
                        "seconds": seconds,
                        "predictions_per_s": n / seconds,
                        "queries": count[0],
                        "queries_per_prediction": count[0] / n if n else None,
                    }
                )
        finally:
            dispose_engines()
            with psycopg.connect(f"{pg}/postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return rows


# ------------------------------------------------------------------------ 2-3. through nginx


def _train(c, task: str, seed: int) -> str:
    body = {
        "task": task,
        "task_type": "classification",
        "train": {"records": RECORDS},
        "hyperparameters": {**HP, "seed": seed},
    }
    r = c.post("/train", json=body)
    r.raise_for_status()
    return r.json()["job_id"]


def _wait_job(c, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


def through_nginx(backbone: str, replicas: int, clients: int, seconds: float, texts: int) -> dict:
    import os

    from tests.fleet.harness import Fleet

    # the same cores in both runs: one replica with every core's thread, or each replica with its share
    threads = str(max(1, (os.cpu_count() or 1) // replicas))
    with (
        tempfile.TemporaryDirectory() as tmp,
        Fleet(Path(tmp), backbone=backbone, replicas=replicas, PROMPTHUB_TORCH_THREADS=threads) as fleet,
    ):
        c = fleet.client(timeout=120)
        job = _wait_job(c, _train(c, "bench", 1))
        assert job["state"] == "succeeded", job
        rng = random.Random(0)
        words = "the movie was great terrible boring wonderful slow fast plot actor story".split()
        pool = [
            encode_request(
                "/predict/bench",
                json.dumps({"inputs": [" ".join(rng.choices(words, k=12)) for _ in range(texts)]}).encode(),
            )
            for _ in range(64)
        ]
        it = iter(range(1 << 62))
        res = run_load(fleet.lb_port, lambda: pool[next(it) % len(pool)], clients, seconds, warmup_s=2.0)
        out = {"replicas": replicas, "clients": clients, "texts_per_request": texts, **res.summary(texts)}
        if replicas == 2:
            out["publish_to_served"] = publish_to_served(fleet, c)
        return out


def publish_to_served(fleet, c, rounds: int = 3) -> list[dict]:
    """A job's success (finished_at in its row) to the first prediction of its version on each
    replica; every replica polled back to back by its own thread."""
    import httpx
    import psycopg

    out = []
    for r in range(rounds):
        want = max(v["version"] for v in c.get("/tasks/bench").json()["versions"]) + 1
        first: dict[str, float] = {}
        stop = threading.Event()

        def poll(base: str, _first=first, _want=want, _stop=stop) -> None:
            with httpx.Client(base_url=base, timeout=30) as h:
                while not _stop.is_set():
                    r = h.post("/predict/bench", json={"inputs": ["fine"]})
                    if r.status_code == 200 and r.json()["version"] == _want:
                        _first[base] = time.time()
                        return

        threads = [threading.Thread(target=poll, args=(b,)) for b in fleet.apis]
        for t in threads:
            t.start()
        job_id = _train(c, "bench", 10 + r)
        job = _wait_job(c, job_id)
        for t in threads:
            t.join(30)
        stop.set()
        with psycopg.connect(fleet.database_url) as conn:
            finished = conn.execute("SELECT finished_at FROM jobs WHERE id = %s", (job_id,)).fetchone()[0]
        finished_ts = (finished if finished.tzinfo else finished.replace(tzinfo=UTC)).timestamp()
        out.append(
            {
                "job": job_id,
                "state": job["state"],
                "ms_after_success": {b: round((first[b] - finished_ts) * 1000, 1) for b in first},
                "replicas_served": len(first),
            }
        )
    return out


def _queries_md(data: dict, args) -> list[str]:
    q = data["queries_per_prediction"]
    cmd = (
        "python -m bench.fleet"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
    )
    m = data["machine"]
    md = ["# Fleet bench", "", f"`{cmd}`", ""]
    md += [f"Machine: {m['cpu']}, {m['cores']} cores, load at start {m['load_avg_at_start']}", ""]
    md += ["## Database queries per prediction (one replica, PostgreSQL, tiny backbone)", ""]
    rows = [
        [
            r["config"],
            r["clients"],
            fmt(r["predictions_per_s"]),
            r["queries"],
            f"{r['queries_per_prediction']:.4f}",
        ]
        for r in q
    ]
    md.append(md_table(["config", "clients", "predictions/s", "queries", "queries / prediction"], rows))
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about 3 minutes in all)")
    ap.add_argument("--backbone", default="all-MiniLM-L6-v2")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--texts", type=int, default=4)
    ap.add_argument(
        "--only", choices=["queries"], help="only the queries part (bench/results/fleet-queries.*)"
    )
    args = ap.parse_args()
    seconds = 8.0 if args.quick else 30.0
    data: dict = {"machine": machine_info(), "args": vars(args)}
    data["queries_per_prediction"] = queries_per_prediction(args.pg, 10.0 if args.quick else 30.0)
    md = _queries_md(data, args)
    if args.only == "queries":
        return save_results("fleet-queries", data, "\n".join(md))
    data["nginx"] = [through_nginx(args.backbone, n, args.clients, seconds, args.texts) for n in (1, 2)]
    md += [
        "",
        f"## Predictions through nginx ({args.backbone}, {args.clients} clients, {args.texts} texts a request)",
        "",
    ]
    rows = [
        [n["replicas"], fmt(n["rps"]), fmt(n["texts_per_s"]), fmt(n["p50_ms"]), fmt(n["p99_ms"]), n["errors"]]
        for n in data["nginx"]
    ]
    md.append(md_table(["replicas", "requests/s", "texts/s", "p50 ms", "p99 ms", "errors"], rows))
    md += ["", "## A job's success to the first prediction of its version on every replica", ""]
    for row in data["nginx"][1].get("publish_to_served", []):
        times = ", ".join(f"port {b.rsplit(':', 1)[1]}: {ms} ms" for b, ms in row["ms_after_success"].items())
        md.append(f"- job {row['job'][:8]} ({row['state']}): {times}")
    md += [
        "",
        "Negative: the replica served the version before the job's row said succeeded (the",
        "worker publishes, then marks the job done).",
    ]
    return save_results("fleet", data, "\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
