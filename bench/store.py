"""Store backends side by side: the local folder and S3 (a moto standalone server on loopback, real
HTTP): publish (checkpoint + sidecar), a cold read on a node with an empty cache (GET, sha256 check,
cache write), a warm read (the node cache), and the start-up listing of every version.

    .venv/bin/python -m bench.store [--versions 100] [--kib 320] [--out bench/results/store.json]

moto keeps objects in its process's memory, so the S3 numbers are HTTP + boto3 + moto costs on this
machine, not a real bucket's network latency; they bound what the client side adds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.engine.checkpoint import sha256_bytes
from app.store import PromptStore
from app.store.s3 import S3PromptStore
from app.store.s3_objects import S3Objects, make_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ms(samples: list[float]) -> dict[str, float]:
    xs = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(xs), 3),
        "p90_ms": round(1000 * xs[int(0.9 * (len(xs) - 1))], 3),
        "mean_ms": round(1000 * statistics.fmean(xs), 3),
    }


def _run(store, reader, blobs: list[bytes]) -> dict[str, object]:
    put, cold, warm = [], [], []
    shas = []
    for i, blob in enumerate(blobs, 1):
        t = time.perf_counter()
        shas.append(store.write_version("bench", i, blob).sha256)
        put.append(time.perf_counter() - t)
    for i, sha in enumerate(shas, 1):
        t = time.perf_counter()
        reader.read_version("bench", i, sha)
        cold.append(time.perf_counter() - t)
    for i, sha in enumerate(shas, 1):
        t = time.perf_counter()
        reader.read_version("bench", i, sha)
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    listed = reader.scan(verify=False)
    scan_s = time.perf_counter() - t
    assert len(listed) == len(blobs)
    return {
        "publish": _ms(put),
        "read_cold": _ms(cold),
        "read_warm": _ms(warm),
        "startup_listing_s": round(scan_s, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--kib", type=int, default=320, help="checkpoint size (MiniLM prefix: ~0.3 MB)")
    ap.add_argument("--out", default="bench/results/store.json")
    args = ap.parse_args()
    blobs = [os.urandom(args.kib * 1024) for _ in range(args.versions)]

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        client = make_client()
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            local = PromptStore(Path(tmp) / "store")
            s3_writer = S3PromptStore(S3Objects("bench", "p", client), Path(tmp) / "cache-writer")
            reader_objects = S3Objects("bench", "p", make_client())
            s3_reader = S3PromptStore(reader_objects, Path(tmp) / "cache-new-node")
            result = {
                "versions": args.versions,
                "checkpoint_bytes": args.kib * 1024,
                "sha256_of_one_ms": round(
                    1000 * min(_time(lambda: sha256_bytes(blobs[0])) for _ in range(5)), 3
                ),
                "local": _run(local, local, blobs),
                "s3_moto_loopback": _run(s3_writer, s3_reader, blobs),
                "s3_requests_of_the_new_node": reader_objects.requests,
            }
    finally:
        proc.terminate()
        proc.wait(10)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
