"""The torch.compile'd layer loop (PROMPTHUB_RUNTIME=compile) gives what the eager loop gives on
mixed batches of every head, on the BERT family and MPNet, with two graphs for every shape of
batch, and leaves non-serving inference (no_grad) to the eager loop."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.utils as dynamo_utils

from app.engine import compiled_runtime as C
from app.engine.batch import mixed_forward
from tests.helpers import (
    MIXED_TEXTS,
    collate_texts,
    every_head_tasks,
    make_serving_task,
    make_tiny_backbone,
    tokens_only,
)

TEXTS = MIXED_TEXTS


def _tasks(bb):
    """Every head; the QA task's one-slot prefix takes the padding to two masked slots."""
    return every_head_tasks(bb, qa_prefix_length=1)


def _batch(bb, texts):
    return collate_texts(bb, texts)


def _graphs() -> int:
    return int(dynamo_utils.counters["stats"]["unique_graphs"])


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_compiled_loop_equals_the_eager_loop_with_two_graphs_for_every_shape(model_type):
    bb = make_tiny_backbone(model_type, name=f"tiny-compile-{model_type}")
    tasks = _tasks(bb)
    cases = [
        (tasks, TEXTS),  # a mixed batch of every head
        (tasks[:1], TEXTS[:1]),  # one row: its own graph
        ([tasks[2]] * 3, TEXTS[:3]),  # one-slot prefixes only (padded to two masked slots)
        ([tasks[4]] * 2, TEXTS[2:4]),  # no prefix at all (prompt tuning)
        ([tasks[1], tasks[3]] * 4, TEXTS + TEXTS[:2]),  # other batch and prefix sizes
    ]
    with torch.inference_mode():
        eager = [mixed_forward(bb, ts, _batch(bb, xs)) for ts, xs in cases]
    before = _graphs()
    runner = C.attach(bb)
    assert bb.runtime is runner and runner.compile_seconds > 0
    assert _graphs() - before == 2  # compiled when attached: many rows and one row
    try:
        with torch.inference_mode():
            compiled = [mixed_forward(bb, ts, _batch(bb, xs)) for ts, xs in cases]
        assert _graphs() - before == 2  # no shape of batch compiled another graph
        assert runner.compiled_calls >= len(cases) and runner.eager_calls == 0
        for rows_e, rows_c, (_, xs) in zip(eager, compiled, cases, strict=True):
            batch = _batch(bb, xs)  # (pad positions: nothing to compare)
            for e, c in zip(tokens_only(rows_e, batch), tokens_only(rows_c, batch), strict=True):
                assert torch.allclose(e, c, atol=1e-4, rtol=1e-4), (e - c).abs().max()
    finally:
        bb.runtime = None


def test_no_grad_inference_runs_the_eager_loop():
    """Evaluation while training and the CLI run under no_grad: the eager loop, no graph built."""
    bb = make_tiny_backbone(name="tiny-compile-eager")
    task = make_serving_task(bb, "classification", seed=1, prefix_length=4)
    batch = _batch(bb, TEXTS[:3])
    with torch.no_grad():
        ref = mixed_forward(bb, [task] * 3, batch)
    runner = C.attach(bb, warm_up=False)
    try:
        before = _graphs()
        with torch.no_grad():
            out = mixed_forward(bb, [task] * 3, batch)
        assert runner.eager_calls == 1 and runner.compiled_calls == 0 and _graphs() == before
        for a, b in zip(ref, out, strict=True):
            assert torch.equal(a, b)
    finally:
        bb.runtime = None


def test_no_compiler_on_a_cpu_is_said_at_attach_with_the_fix():
    """Without a C++ compiler inductor fails inside its first compilation; attach says so first."""
    from torch._inductor import config as inductor_config

    bb = make_tiny_backbone(name="tiny-compile-nocxx")
    with inductor_config.patch({"cpp.cxx": (None, "no-such-c++-compiler")}):
        with pytest.raises(RuntimeError, match=r"needs a C\+\+ compiler.*COMPILER=1.*RUNTIME=torch or onnx"):
            C.attach(bb)
    assert bb.runtime is None
