"""ONNX Runtime as a second runtime for the frozen backbone's layer loop.

The graph is the encoder's layer loop only (BERT family: BERT, RoBERTa, ELECTRA, XLM-R,
CamemBERT). Its inputs are what the torch loop consumes after the embeddings:

    hidden       [B, L, H]        float32  embeddings (input prompts already in front, in torch)
    token_mask   [B, L]           float32  1 = a real token
    prefix_kv    [N, 2, B, P, kv] float32  per-layer, per-row prefix keys (0) and values (1)
    prefix_mask  [N, B, P]        float32  1 where that row attends that prefix slot at that layer
    token_index  [T]              int64    the real tokens' flat positions in [B * L]

and its output is the last hidden states [B, L, H] (zeros at pad positions). Batch, length, prefix
and token axes are dynamic. Every step but attention runs on the T real tokens only (packed, as the
torch loop packs: architectures.Packing), so padding costs only in attention.
The mixed batch is gathered as today in torch (app.engine.batch.build_prefix_batch), the
embeddings run in torch, then one ORT run does every layer. A batch without any prefix passes
one masked slot (P = 1, mask 0): exp(min - max) is exactly 0 in float32, so it changes nothing.

Precisions: "fp32" (the exported graph) and "int8" (weights of every projection and feed-forward
MatMul quantized per output channel; activations quantized dynamically per batch by default, or
statically from a calibration set: `quantize(..., calibration=...)`). Built once per backbone and
cached as a file keyed by the backbone's identity (config and weights sha256), the export version
and the precision; the file is written atomically (temp file in the same folder, then rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from app.engine.architectures import BERT_FAMILY, Packing
from app.engine.backbone import Backbone, BackboneError, PrefixBatch

log = logging.getLogger(__name__)

#: bump when the graph's inputs, outputs or maths change: older cache files are then rebuilt
EXPORT_VERSION = 2  # 2: packed tokens (the token_index input)
RUNTIMES = ("torch", "onnx")
PRECISIONS = ("fp32", "int8", "bf16", "fp16")
ONNX_PRECISIONS = ("fp32", "int8")
INPUTS = ("hidden", "token_mask", "prefix_kv", "prefix_mask", "token_index")


class _LayerLoop(nn.Module):
    """The BERT-family layer loop in export form: the prefix slots are always concatenated (the
    torch loop skips a layer's prefix when no row uses it; a masked slot gives the same output).
    The additive masks are built once per forward, not per layer. The per-token work runs on the
    packed tokens (`token_index`: their flat positions in [B * L], as architectures.Packing):
    every batch, so one graph; attention takes its inputs back to [B, L] and is masked as in torch."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        if backbone.model_type not in BERT_FAMILY:
            raise BackboneError(
                f"the onnx runtime supports the BERT family ({', '.join(sorted(BERT_FAMILY))}); "
                f"backbone {backbone.name!r} is {backbone.model_type!r}: use PROMPTHUB_RUNTIME=torch"
            )
        self.layers = backbone.model.encoder.layer
        self.heads = backbone.num_heads

    def forward(
        self, hidden: Tensor, token_mask: Tensor, prefix_kv: Tensor, prefix_mask: Tensor, token_index: Tensor
    ) -> Tensor:
        neg = torch.finfo(torch.float32).min
        b, n, width = hidden.shape
        tok_add = (1.0 - token_mask) * neg  # [B, L]
        pre_add = (1.0 - prefix_mask) * neg  # [N, B, P]

        # the packed tokens as [1, T, H]: a projection of a 3-D input exports as MatMul + Add (the
        # op the int8 quantization rewrites; a 2-D one would be a Gemm)
        def unpack(t: Tensor) -> Tensor:  # [1, T, D] -> [B, L, D], zeros at the pad positions
            out = torch.zeros(b * n, t.shape[-1], dtype=t.dtype)
            return out.index_put((token_index,), t[0]).view(b, n, t.shape[-1])

        def pack(t: Tensor) -> Tensor:  # [B, L, D] -> [1, T, D]
            return t.reshape(b * n, t.shape[-1]).index_select(0, token_index).unsqueeze(0)

        x = pack(hidden)
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            h = self.heads
            add = torch.cat([pre_add[i], tok_add], dim=1)[:, None, None, :]  # [B, 1, 1, P + L]
            q, k, v = unpack(sa.query(x)), unpack(sa.key(x)), unpack(sa.value(x))
            q = q.reshape(b, n, h, -1).transpose(1, 2)
            k = torch.cat([prefix_kv[i, 0], k], dim=1)
            v = torch.cat([prefix_kv[i, 1], v], dim=1)
            k = k.view(b, k.shape[1], h, -1).transpose(1, 2)
            v = v.view(b, v.shape[1], h, -1).transpose(1, 2)
            d = q.shape[-1]
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / d**0.5) + add
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
            ctx = pack(ctx.transpose(1, 2).reshape(b, n, width))
            attn_out = layer.attention.output(ctx, x)
            x = layer.output(layer.intermediate(attn_out), attn_out)
        return unpack(x)


def _dummy_inputs(backbone: Backbone, b: int = 2, n: int = 5, p: int = 3) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, n, backbone.hidden_size, generator=g)
    token_mask = torch.ones(b, n)
    token_mask[1, 3:] = 0
    kv = torch.randn(backbone.num_layers, 2, b, p, backbone.kv_size, generator=g)
    mask = torch.ones(backbone.num_layers, b, p)
    mask[:, 1, 2:] = 0
    return hidden, token_mask, kv, mask, Packing(token_mask).index


def export_fp32(backbone: Backbone, path: str | Path) -> None:
    """Export the layer loop of `backbone` (on the CPU, fp32) to an ONNX file at `path`."""
    loop = _LayerLoop(backbone).eval()
    dev = backbone.device
    if dev.type != "cpu" or next(backbone.model.parameters()).dtype != torch.float32:
        raise BackboneError("export the onnx graph from a float32 backbone on the CPU")
    with torch.no_grad():
        torch.onnx.export(
            loop,
            _dummy_inputs(backbone),
            str(path),
            input_names=list(INPUTS),
            output_names=["last_hidden"],
            dynamic_axes={
                "hidden": {0: "batch", 1: "length"},
                "token_mask": {0: "batch", 1: "length"},
                "prefix_kv": {2: "batch", 3: "prefix"},
                "prefix_mask": {1: "batch", 2: "prefix"},
                "token_index": {0: "tokens"},
                "last_hidden": {0: "batch", 1: "length"},
            },
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )


class CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader over real inputs: each item is the
    graph's inputs (numpy) of one batch, e.g. from `calibration_batches`."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self._batches = list(batches)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def digest(self) -> str:
        h = hashlib.sha256()
        for b in self._batches:
            for k in INPUTS:
                h.update(k.encode())
                h.update(np.ascontiguousarray(b[k]).tobytes())
        return h.hexdigest()[:16]


def graph_inputs(
    backbone: Backbone, hidden: Tensor, token_mask: Tensor, prefix: PrefixBatch | None
) -> dict[str, np.ndarray]:
    """The graph's inputs for embeddings `hidden` [B, L, H], `token_mask` [B, L] and `prefix`."""
    b = hidden.shape[0]
    if prefix is None:
        kv = np.zeros((backbone.num_layers, 2, b, 1, backbone.kv_size), dtype=np.float32)
        pm = np.zeros((backbone.num_layers, b, 1), dtype=np.float32)
    else:
        kv = prefix.kv.detach().to("cpu", torch.float32).numpy()
        pm = prefix.mask.detach().to("cpu", torch.float32).numpy()
    return {
        "hidden": hidden.detach().to("cpu", torch.float32).numpy(),
        "token_mask": token_mask.detach().to("cpu", torch.float32).numpy(),
        "prefix_kv": np.ascontiguousarray(kv),
        "prefix_mask": np.ascontiguousarray(pm),
        "token_index": Packing(token_mask).index.to("cpu", torch.int64).numpy(),
    }


def calibration_batches(
    backbone: Backbone, batches: Iterable[tuple[dict[str, Tensor], PrefixBatch | None]]
) -> list[dict[str, np.ndarray]]:
    """Graph inputs of real batches (collated inputs and their tasks' prefixes), embedded in torch."""
    out = []
    with torch.no_grad():
        for batch, prefix in batches:
            mask = batch["attention_mask"]
            hidden = backbone._adapter.embed(batch["input_ids"], batch.get("token_type_ids"), mask)
            out.append(graph_inputs(backbone, hidden, mask, prefix))
    return out


def quantize(
    src: str | Path,
    dst: str | Path,
    calibration: CalibrationReader | None = None,
    keep_ffn_out_fp32: bool = False,
) -> None:
    """int8 weights (per output channel) of every MatMul with a constant weight: the projections
    and the feed-forward. Activations: dynamic (per batch) without `calibration`; static QDQ
    (calibrated ranges, MinMax) of those MatMuls' inputs with it. The attention's own MatMuls
    (activation x activation, where the prefix keys/values enter) stay in float32.
    keep_ffn_out_fp32: also leave each feed-forward output projection (input: the GELU output,
    whose range is the widest of the layer) in float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod
    from onnxruntime.quantization.quant_utils import QuantFormat

    weight_matmuls = _weight_matmuls(src, skip_ffn_out=keep_ffn_out_fp32)
    if calibration is None:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=weight_matmuls,
        )
        return
    calibration.rewind()
    quantize_static(
        str(src),
        str(dst),
        calibration,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=weight_matmuls,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def _weight_matmuls(path: str | Path, skip_ffn_out: bool = False) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    widest = max((d[0] for d in shapes.values() if len(d) == 2), default=0)  # the FFN's inner size
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in shapes:
            continue
        if skip_ffn_out and len(shapes[n.input[1]]) == 2 and shapes[n.input[1]][0] == widest:
            continue  # [intermediate, hidden]: the feed-forward output projection
        out.append(n.name)
    return out


def cache_key(backbone: Backbone, precision: str, variant: str = "") -> str:
    ident = backbone.identity
    raw = json.dumps(
        {
            "config": ident.config_sha256,
            "weights": ident.weights_sha256,
            "export": EXPORT_VERSION,
            "precision": precision,
            "variant": variant,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in backbone.name)
    return f"{safe}-{precision}{('-' + variant) if variant else ''}-v{EXPORT_VERSION}-{digest}.onnx"


_build_lock = threading.Lock()


def build(
    backbone: Backbone,
    precision: str,
    cache_dir: str | Path,
    calibration: CalibrationReader | None = None,
    keep_ffn_out_fp32: bool = False,
) -> Path:
    """The cached ONNX file of `backbone`'s layer loop at `precision`, exported (and quantized)
    on the first call; later calls (and processes) reuse the file. Atomic: a half-written file is
    never seen under the final name."""
    if precision not in ONNX_PRECISIONS:
        raise BackboneError(
            f"precision {precision!r}: the onnx runtime runs {', '.join(ONNX_PRECISIONS)} "
            "(bf16/fp16 are torch precisions: PROMPTHUB_RUNTIME=torch)"
        )
    variant = f"static-{calibration.digest()}" if calibration is not None else ""
    if keep_ffn_out_fp32 and precision == "int8":
        variant = "-".join(x for x in (variant, "ffnout32") if x)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / cache_key(backbone, precision, variant)
    with _build_lock:
        if final.is_file():
            return final
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_fp32(backbone, fp32)
            _inline_external_data(fp32)
            out = fp32
            if precision == "int8":
                out = Path(tmp) / "int8.onnx"
                quantize(fp32, out, calibration, keep_ffn_out_fp32)
            staged = cache_dir / f".{final.name}.{os.getpid()}.tmp"
            data = out.read_bytes()
            with open(staged, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(staged, final)
        log.info("onnx runtime: built %s", final)
    return final


def _inline_external_data(path: Path) -> None:
    """One self-contained file (the exporter may write weights beside the graph)."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    onnx.save_model(model, str(path), save_as_external_data=False)


class OnnxLayerLoop:
    """A session on a built graph; call it like the torch loop's part of Backbone.forward."""

    def __init__(self, path: str | Path, precision: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.path = Path(path)
        self.precision = precision
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(
        self, backbone: Backbone, hidden: Tensor, token_mask: Tensor, prefix: PrefixBatch | None
    ) -> Tensor:
        feeds = graph_inputs(backbone, hidden, token_mask, prefix)
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(out).to(hidden.device)


def attach(
    backbone: Backbone,
    precision: str = "fp32",
    cache_dir: str | Path = "var/onnx",
    threads: int | None = None,
    calibration: CalibrationReader | None = None,
    keep_ffn_out_fp32: bool = False,
) -> OnnxLayerLoop:
    """Build (or reuse) the graph and make `backbone`'s inference forwards run through it."""
    path = build(backbone, precision, cache_dir, calibration, keep_ffn_out_fp32)
    runner = OnnxLayerLoop(path, precision, threads)
    backbone.runtime = runner
    return runner
