"""The shipped prefixes answer as they did before the task-type redesign.

tests/fixtures/shipped_predictions.json was written by the engine as it was before the redesign
(one torch thread): every label, tag, span and score of the shipped tasks on fixed inputs. The
same inputs through today's engine must give the same JSON: every label, tag, span and text exactly,
every float to 1e-5 relative (1e-7 absolute). Floats are not compared bit for bit: their last bits
depend on which vector kernels the CPU runs (the reference was written on another machine; on an
AMD EPYC the largest difference is 2e-7 absolute).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "shipped_predictions.json"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["banking77", "brown-pos"])
def test_shipped_task_predictions_are_unchanged(name, minilm):
    import torch

    from app.engine.checkpoint import load_checkpoint
    from app.engine.predict import predict

    ref = json.loads(REFERENCE.read_text())[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = load_checkpoint(ROOT / "prompts_store" / name / "v0001.safetensors", minilm)
        got = predict(minilm, task, ref["inputs"])
    finally:
        torch.set_num_threads(threads)
    got = json.loads(json.dumps(got))
    # fields added since (token classification's per-word "scores" and "offsets") are not compared
    got = [{k: g[k] for k in want} for g, want in zip(got, ref["predictions"], strict=True)]
    assert _differences(got, ref["predictions"], "predictions") == []


def _differences(got, want, path: str) -> list[str]:
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{path}: keys {sorted(got) if isinstance(got, dict) else got!r} != {sorted(want)}"]
        return [d for k in want for d in _differences(got[k], want[k], f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r} != {want!r}"]
        return [
            d
            for i, (g, w) in enumerate(zip(got, want, strict=True))
            for d in _differences(g, w, f"{path}[{i}]")
        ]
    if isinstance(want, float) and isinstance(got, float):
        return [] if math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-7) else [f"{path}: {got!r} != {want!r}"]
    return [] if got == want and type(got) is type(want) else [f"{path}: {got!r} != {want!r}"]
