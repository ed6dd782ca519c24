"""The engine comparison (`python -m bench.serving --engines`) runs every engine on the same
batches and writes its table; timings are never asserted, only the structure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_engines_quick_writes_results(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    engines = "hf-fp32,ort-int8-bare,prompthub-torch-fp32,prompthub-compile-fp32,prompthub-onnx-int8,peft-lora-mixed,peft-prefix-switch"
    argv = ["--engines", "--quick", "--engine-list", engines, "--sets", "short"]
    argv += ["--onnx-cache-dir", str(tmp_path / "onnx"), "--out", str(tmp_path), "--name", "smoke"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.serving", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "smoke.json").read_text())
    assert res["benchmark"] == "engines"
    for e in engines.split(","):
        row = res["results"][f"{e}/short"]
        assert row["texts_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert res["results"]["hf-fp32/short"]["x_hf_fp32"] == 1.0
    md = (tmp_path / "smoke.md").read_text()
    assert md.startswith("# Engine benchmark") and "PEFT LoRA r=8, 4 adapters" in md
