"""The shipped prefixes answer bit-for-bit as they did before the task-type redesign.

tests/fixtures/shipped_predictions.json was written by the engine as it was before the redesign
(one torch thread): every label, tag, span and score of the shipped tasks on fixed inputs. The
same inputs through today's engine must give exactly the same JSON (floats compared with ==).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "shipped_predictions.json"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["banking77", "brown-pos", "squad"])
def test_shipped_task_predictions_are_bit_identical(name, minilm):
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
    assert got == ref["predictions"]
