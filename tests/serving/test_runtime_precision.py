"""The hub runs the backbone in the runtime and precision of its settings (PROMPTHUB_RUNTIME,
PROMPTHUB_PRECISION), and refuses, or with PROMPTHUB_PRECISION_MISMATCH=warn flags, versions
trained for another precision."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.engine.checkpoint import BackboneMismatchError, PrecisionMismatchError, checkpoint_bytes
from app.serving.hub import Hub, TaskNotFound
from app.store import PromptStore
from tests.helpers import make_serving_task, make_tiny_backbone

INPUTS = ["great service", "awful, never again", "ok"]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    """One graph cache for the module: each precision is exported once."""
    return str(tmp_path_factory.mktemp("onnx"))


def _hub(settings, tmp_path, blobs: dict[str, bytes]) -> Hub:
    """A hub on its own tiny backbone (the runtime is attached to it) over a store with `blobs`."""
    bb = make_tiny_backbone(name="tiny-runtime")
    store = PromptStore(tmp_path / f"store-{len(list(tmp_path.iterdir()))}")
    shas = {name: store.write_version(name, 1, blob, {}).sha256 for name, blob in blobs.items()}

    def resolve(name: str, version: int | None) -> tuple[int, str]:
        if name not in shas:
            raise TaskNotFound(name, version)
        return 1, shas[name]

    hub = Hub(settings, resolve=resolve, read=lambda n, v, s: store.read_version(n, v, s), backbones=[bb])
    hub.start()
    return hub


def _blob(precision: str | None = None, seed: int = 0) -> bytes:
    bb = make_tiny_backbone(name="tiny-runtime")  # same seed: the same identity as the hub's
    meta = {"source": "test"} | ({"precision": precision} if precision else {})
    return checkpoint_bytes(make_serving_task(bb, seed=seed), bb, meta)


def test_onnx_fp32_serves_what_torch_serves(settings_factory, tmp_path, onnx_dir):
    blobs = {"t": _blob()}
    torch_hub = _hub(settings_factory(), tmp_path, blobs)
    onnx_hub = _hub(settings_factory(runtime="onnx", onnx_cache_dir=onnx_dir), tmp_path, blobs)
    try:
        assert onnx_hub.backbone.runtime is not None and torch_hub.backbone.runtime is None
        info = onnx_hub.runtime_info()
        assert (
            info["runtime"] == "onnx" and info["precision"] == "fp32" and info["onnx_file"].endswith(".onnx")
        )
        _, a = asyncio.run(torch_hub.predict("t", INPUTS))
        _, b = asyncio.run(onnx_hub.predict("t", INPUTS))
        assert [p["label"] for p in a] == [p["label"] for p in b]
        for pa, pb in zip(a, b, strict=True):
            assert abs(pa["score"] - pb["score"]) < 1e-4
    finally:
        torch_hub.close()
        onnx_hub.close()


def test_compile_runtime_serves_what_torch_serves(settings_factory, tmp_path):
    blobs = {"t": _blob()}
    torch_hub = _hub(settings_factory(), tmp_path, blobs)
    compiled_hub = _hub(settings_factory(runtime="compile"), tmp_path, blobs)
    try:
        runner = compiled_hub.backbone.runtime
        assert runner is not None and runner.compile_seconds > 0  # compiled at start-up
        info = compiled_hub.runtime_info()
        assert info["runtime"] == "compile" and info["precision"] == "fp32" and info["onnx_file"] is None
        _, a = asyncio.run(torch_hub.predict("t", INPUTS))
        _, b = asyncio.run(compiled_hub.predict("t", INPUTS))
        assert runner.compiled_calls >= 1  # the batcher's forwards ran the compiled loop
        assert [p["label"] for p in a] == [p["label"] for p in b]
        for pa, pb in zip(a, b, strict=True):
            assert abs(pa["score"] - pb["score"]) < 1e-4
    finally:
        torch_hub.close()
        compiled_hub.close()


def test_int8_server_refuses_a_version_trained_for_fp32(settings_factory, tmp_path, onnx_dir):
    s = settings_factory(runtime="onnx", precision="int8", onnx_cache_dir=onnx_dir)
    hub = _hub(s, tmp_path, {"fp32-task": _blob(), "int8-task": _blob("int8", seed=1)})
    try:
        assert hub.backbone.precision == "int8"
        with pytest.raises(
            PrecisionMismatchError, match=r"trained for a fp32 backbone and this server runs int8"
        ):
            asyncio.run(hub.predict("fp32-task", INPUTS))
        assert issubclass(PrecisionMismatchError, BackboneMismatchError)  # the API answers 409
        _, preds = asyncio.run(hub.predict("int8-task", INPUTS))  # trained for int8: served
        assert len(preds) == 3
        assert hub.runtime_info()["mismatched_versions_served"] == []
    finally:
        hub.close()


def test_warn_serves_the_mismatch_loudly(settings_factory, tmp_path, onnx_dir, caplog):
    s = settings_factory(runtime="onnx", precision="int8", precision_mismatch="warn", onnx_cache_dir=onnx_dir)
    hub = _hub(s, tmp_path, {"fp32-task": _blob()})
    try:
        with caplog.at_level(logging.WARNING, logger="app.serving.hub"):
            for _ in range(2):
                _, preds = asyncio.run(hub.predict("fp32-task", INPUTS))
                assert len(preds) == 3
        warned = [r for r in caplog.records if "trained for a fp32 backbone on int8" in r.getMessage()]
        assert len(warned) == 1  # once per version, not per request
        assert hub.runtime_info()["mismatched_versions_served"] == [
            {"task": "fp32-task", "version": 1, "trained_for": "fp32", "served": "int8"}
        ]
    finally:
        hub.close()


def test_bf16_torch_serves_close_to_fp32_with_fp32_heads(settings_factory, tmp_path):
    blobs = {"t": _blob("bf16")}
    ref = _hub(settings_factory(precision_mismatch="warn"), tmp_path, blobs)
    half = _hub(settings_factory(precision="bf16"), tmp_path, blobs)
    try:
        import torch

        assert next(half.backbone.model.parameters()).dtype == torch.bfloat16
        assert half.backbone.precision == "bf16"
        _, a = asyncio.run(ref.predict("t", INPUTS))
        _, b = asyncio.run(half.predict("t", INPUTS))
        # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); over 4 layers and a softmax the
        # probabilities move by a few 1e-3 on this random model: 2e-2 leaves a margin, far below
        # the gap between labels that a real head separates
        for pa, pb in zip(a, b, strict=True):
            assert abs(pa["score"] - pb["score"]) < 2e-2
    finally:
        ref.close()
        half.close()


def test_settings_refuse_runtime_precision_pairs_that_do_not_exist():
    with pytest.raises(ValidationError, match="int8 needs runtime onnx"):
        Settings(precision="int8")
    with pytest.raises(ValidationError, match="needs runtime torch"):
        Settings(runtime="onnx", precision="bf16")
    with pytest.raises(ValidationError, match="int8 needs runtime onnx"):
        Settings(runtime="compile", precision="int8")
    assert Settings(runtime="ONNX", precision="Int8").precision == "int8"
    assert Settings(runtime="compile", precision="bf16").runtime == "compile"


def test_readyz_reports_the_runtime(client):
    body = client.get("/readyz").json()
    assert body["runtime"]["runtime"] == "torch" and body["runtime"]["precision"] == "fp32"
    assert body["runtime"]["precision_mismatch"] == "refuse"
