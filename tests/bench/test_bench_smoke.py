"""Smoke tests of the benchmark scripts: `--quick` runs write results of the documented shape.

Timings are never asserted (the machines are shared and noisy); only the structure is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.engine.batch import length_buckets

REPO = Path(__file__).resolve().parents[2]


def _run(module: str, out: Path, timeout: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--out", str(out), "--name", "smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "smoke.md").read_text().startswith("# ")
    return json.loads((out / "smoke.json").read_text())


@pytest.mark.slow
def test_serving_quick_writes_results(tmp_path: Path):
    res = _run("bench.serving", tmp_path, 600)
    assert res["benchmark"] == "serving"
    assert {"cpu", "cores", "torch"} <= set(res["machine"])
    rows = res["throughput"]
    assert rows[0]["server"] == "bare"
    keys = {
        "server",
        "tasks",
        "mix",
        "rps",
        "texts_per_s",
        "p50_ms",
        "p99_ms",
        "vs_bare",
        "errors",
        "repeats",
    }
    for row in rows:
        assert keys <= set(row), row
        assert row["errors"] == 0, row
    assert {(r["server"], r["tasks"], r["mix"]) for r in rows} >= {
        ("prompthub", 1, "one"),
        ("prompthub", 8, "uniform"),
        ("hf", 1, "one"),
        ("ort-fp32", 1, "one"),
        ("ort-int8", 1, "one"),
        ("lora", 8, "uniform"),
        ("peft", 8, "uniform"),
    }
    by_key = {(r["server"], r["tasks"], r["mix"]): r for r in rows}
    u8 = by_key[("prompthub", 8, "uniform")]
    assert u8["vs_transformers"] > 0 and u8["vs_lora"] > 0 and u8["vs_peft"] > 0
    # the peers batch across requests as PromptHub does (16 clients, 4 texts each), PEFT does not
    assert by_key[("lora", 8, "uniform")]["mean_batch_rows"] > 4
    assert set(res["memory"]["peers"]) == {"hf", "ort-fp32", "ort-int8", "lora", "peft"}
    assert [r["tasks"] for r in res["memory"]["rows"]] == [1, 8]
    assert res["per_task"]["device_bytes"] > res["per_task"]["kv_bytes"] > 0
    assert res["cold"]["n"] >= 1 and res["cold"]["load_ms_in_process"] > 0


@pytest.mark.slow
def test_training_quick_writes_results(tmp_path: Path):
    res = _run("bench.training", tmp_path, 600)
    assert res["benchmark"] == "training"
    methods = {r["method"]: r for r in res["methods"]}
    assert {"p-tuning-v2", "fine-tuning"} <= set(methods)
    for r in methods.values():
        assert r["step_ms"] > 0 and 0 < r["trainable_fraction"] <= 1
        assert r["memory"] and r["memory"]["peak_bytes"] > 0
    assert methods["p-tuning-v2"]["trainable_fraction"] < 0.01 < methods["fine-tuning"]["trainable_fraction"]


def test_length_buckets_cover_rows_in_order():
    lengths = [3, 3, 4, 10, 11, 30, 31, 31]
    for overhead in (0.0, 4.0, 16.0, 1e9, float("inf")):
        spans = length_buckets(lengths, overhead)
        assert spans[0][0] == 0 and spans[-1][1] == len(lengths)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
    assert length_buckets(lengths, float("inf")) == [(0, 8)]
    assert len(length_buckets(lengths, 4.0)) == 3  # short, middle and long rows apart
    assert length_buckets([], 16.0) == [] and length_buckets([5], 16.0) == [(0, 1)]


def test_ablation_settings_become_server_environment():
    from bench.serving.cli import ablation_env

    flags = ablation_env("--bucket-overhead-tokens inf --threads 1")
    assert flags == {"PROMPTHUB_BUCKET_OVERHEAD_TOKENS": "inf", "PROMPTHUB_TORCH_THREADS": "1"}
    assert ablation_env("bucket_overhead_tokens=inf PROMPTHUB_MAX_WAIT_MS=2") == {
        "PROMPTHUB_BUCKET_OVERHEAD_TOKENS": "inf",
        "PROMPTHUB_MAX_WAIT_MS": "2",
    }
    with pytest.raises(ValueError, match="not a server setting"):
        ablation_env("--no-such-knob 1")
