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


def test_lora_adapters_built_directly_equal_peft_add_adapter():
    """bench.serving.engines.lora_model adds adapters to the LoRA layers directly (PEFT's
    add_adapter walks the whole model per adapter); the model is the one add_adapter builds."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from bench.serving.engines import lora_model
    from tests.helpers import collate_texts, make_tiny_backbone

    bb = make_tiny_backbone(name="tiny-lora-peer")
    names = ["a0", "a1", "a2"]
    fast = lora_model(copy.deepcopy(bb.model), names)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0)
    ref = get_peft_model(copy.deepcopy(bb.model), cfg, adapter_name=names[0])
    for n in names[1:]:
        ref.add_adapter(n, cfg)
    assert sorted(n for n, _ in ref.named_parameters()) == sorted(n for n, _ in fast.named_parameters())
    ref.load_state_dict(fast.state_dict())  # the same (seeded random) weights
    ref.eval()
    batch = collate_texts(bb, ["hello world", "a longer sentence of words", "one"])
    rows = ["a1", "a2", "a1"]
    with torch.inference_mode():
        got = fast(**batch, adapter_names=rows).last_hidden_state
        want = ref(**batch, adapter_names=rows).last_hidden_state
        other = fast(**batch, adapter_names=["a0"] * 3).last_hidden_state
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, other)  # each adapter does its own work
