"""The ONNX Runtime layer loop equals the torch loop (fp32, 1e-4 on logits, every head), is built
once per backbone identity and precision, and its int8 form really is quantized."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from app.engine import onnx_runtime as O
from app.engine.backbone import BackboneError
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


@pytest.fixture(scope="module")
def bb():
    return make_tiny_backbone(name="tiny-onnx")  # its own: a runtime is attached to it


@pytest.fixture(scope="module")
def built(bb, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return d, O.build(bb, "fp32", d), O.build(bb, "int8", d)


def _tasks(bb):
    return every_head_tasks(bb)


def _batch(bb, texts=TEXTS):
    return collate_texts(bb, texts)


def _run(bb, runner, tasks, batch):
    bb.runtime = runner
    try:
        return tokens_only(mixed_forward(bb, tasks, batch), batch)
    finally:
        bb.runtime = None


def test_fp32_equals_torch_for_every_head_in_one_mixed_batch(bb, built):
    _, fp32, _ = built
    tasks = _tasks(bb)
    batch = _batch(bb)
    ref = _run(bb, None, tasks, batch)
    got = _run(bb, O.OnnxLayerLoop(fp32, "fp32"), tasks, batch)
    for t, a, b in zip(tasks, ref, got, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4, rtol=0), (t.spec.task_type, (a - b).abs().max())
    # and each task alone (single-task batches, other lengths): the same
    for t in tasks:
        one = _batch(bb, TEXTS[:3])
        a = _run(bb, None, [t] * 3, one)
        b = _run(bb, O.OnnxLayerLoop(fp32, "fp32"), [t] * 3, one)
        assert all(torch.allclose(x, y, atol=1e-4, rtol=0) for x, y in zip(a, b, strict=True))


def test_batch_without_prefix_and_padding_only_rows(bb, built):
    _, fp32, _ = built
    head_only = make_serving_task(bb, "classification", seed=7, method="prompt-tuning", prefix_length=1)
    head_only.prompt = None  # a head and nothing else: no prefix, no prompt
    batch = _batch(bb)
    ref = _run(bb, None, [head_only] * len(TEXTS), batch)
    got = _run(bb, O.OnnxLayerLoop(fp32, "fp32"), [head_only] * len(TEXTS), batch)
    assert max((a - b).abs().max().item() for a, b in zip(ref, got, strict=True)) < 1e-4


def test_int8_is_quantized_and_close(bb, built):
    import onnx

    _, fp32, int8 = built
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops, ops
    assert int8.stat().st_size < fp32.stat().st_size
    tasks = _tasks(bb)[:4]
    batch = _batch(bb, TEXTS[:4])
    ref = _run(bb, None, tasks, batch)
    got = _run(bb, O.OnnxLayerLoop(int8, "int8"), tasks, batch)
    for a, b in zip(ref, got, strict=True):
        assert not torch.equal(a, b)
        assert (a - b).norm() / a.norm() < 0.1  # random tiny weights: int8 stays within 10%


def test_static_int8_from_calibration_batches(bb, tmp_path):
    import onnx

    from app.engine.batch import build_prefix_batch

    tasks = _tasks(bb)[:4]
    batch = _batch(bb, TEXTS[:4])
    reader = O.CalibrationReader(
        O.calibration_batches(bb, [(batch, build_prefix_batch(tasks, bb.num_layers, bb.kv_size))])
    )
    path = O.build(bb, "int8", tmp_path, reader)
    assert "static-" in path.name
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    got = _run(bb, O.OnnxLayerLoop(path, "int8"), tasks, batch)
    ref = _run(bb, None, tasks, batch)
    for a, b in zip(ref, got, strict=True):
        assert (a - b).norm() / a.norm() < 0.2


def test_built_once_keyed_by_identity_precision_and_export_version(bb, built):
    d, fp32, int8 = built
    assert fp32 != int8 and fp32.parent == Path(d)
    assert f"-v{O.EXPORT_VERSION}-" in fp32.name
    mtime = fp32.stat().st_mtime_ns
    assert O.build(bb, "fp32", d) == fp32 and fp32.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not [p for p in os.listdir(d) if p.endswith(".tmp") or p.startswith(".build-")]
    other = make_tiny_backbone(name="tiny-onnx")
    with torch.no_grad():
        other.model.encoder.layer[0].output.dense.bias.add_(1.0)
    other._identity = None
    assert O.cache_key(other, "fp32") != fp32.name  # other weights: another file


def test_training_and_grad_always_run_torch(bb, built):
    _, fp32, _ = built
    runner = O.OnnxLayerLoop(fp32, "fp32")
    calls = []

    class Spy:
        precision = "fp32"

        def __call__(self, *a):
            calls.append(1)
            return runner(*a)

    bb.runtime = Spy()
    try:
        batch = _batch(bb, TEXTS[:2])
        with torch.enable_grad():
            bb(batch["input_ids"], batch["attention_mask"])
        assert calls == []
        with torch.no_grad():
            bb(batch["input_ids"], batch["attention_mask"])
        assert calls == [1]
        assert bb.precision == "fp32"
    finally:
        bb.runtime = None


def test_other_architectures_and_precisions_are_refused(tmp_path):
    with pytest.raises(BackboneError, match="BERT family"):
        O.build(make_tiny_backbone("mpnet"), "fp32", tmp_path)
    with pytest.raises(BackboneError, match="torch precisions"):
        O.build(make_tiny_backbone(), "bf16", tmp_path)


def test_int8_can_keep_the_feed_forward_output_in_fp32(bb, built, tmp_path):
    import onnx

    d, _, int8 = built
    kept = O.build(bb, "int8", d, keep_ffn_out_fp32=True)
    assert kept != int8 and "ffnout32" in kept.name

    def quantized(path):
        return sum(n.op_type == "MatMulInteger" for n in onnx.load(str(path)).graph.node)

    # 6 weight MatMuls a layer (q, k, v, attention out, FFN in, FFN out); one a layer kept fp32
    assert quantized(int8) == 6 * bb.num_layers
    assert quantized(kept) == 5 * bb.num_layers
