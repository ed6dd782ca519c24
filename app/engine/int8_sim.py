"""Training for an int8 backbone (the `precision: "int8"` training option).

A server with PROMPTHUB_RUNTIME=onnx PROMPTHUB_PRECISION=int8 runs the frozen layer loop with int8
weights and activations quantized per batch (app.engine.onnx_runtime.quantize: ONNX Runtime's
dynamic quantization). A prefix trained against the fp32 backbone loses an amount of accuracy there
that differs per task (README, "Backbone precision and the shipped tasks"), so the server refuses
such versions by default. This module lets training see the int8 backbone instead: a copy of the
backbone whose projections compute what ONNX Runtime's quantized MatMuls compute,

    weights      int8, symmetric, one scale per output channel: max |w| / 127 (fixed: frozen);
    activations  uint8, asymmetric, one scale and zero point per tensor (per batch), from the
                 tensor's min and max with 0 inside the range (DynamicQuantizeLinear);

as fake quantization (quantize, round, dequantize in float32), with the straight-through gradient,
so the prefix and head learn against the numerics they will be served with. On one MiniLM layer it
equals ONNX Runtime's output to 5e-6; over six layers the two drift apart about as far as int8 is
from fp32, because float rounding differences (ORT's GELU, its summation order) flip single
quantization steps that later layers carry on. What training sees is int8's kind of error, not its
exact values. The same projections as the served graph are quantized: every attention and
feed-forward projection, except each feed-forward output projection when the server keeps it in
fp32 (PROMPTHUB_INT8_KEEP_FFN_OUT_FP32). The attention's own products (where the prefixes enter)
stay fp32 on both sides. The version records `"precision": "int8"`, so an int8 server serves it
and an fp32 one refuses it. BERT family only, as the ONNX runtime.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine.architectures import BERT_FAMILY
from app.engine.backbone import Backbone, BackboneError


class Int8Linear(nn.Module):
    """An nn.Linear as ONNX Runtime's dynamically quantized MatMul computes it (fake quantization)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # [out, in]
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        # a frozen parameter, not a buffer: the copy counts the backbone's parameters as the original
        # does (a run's trainable fraction is of the backbone)
        self.weight = nn.Parameter(
            torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127), requires_grad=False
        )
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(fake_quant_activations(x), self.weight, self.bias)


def fake_quant_activations(x: Tensor) -> Tensor:
    """uint8 per-tensor quantization with 0 in range (ONNX DynamicQuantizeLinear), then back to float;
    the gradient passes straight through."""
    with torch.no_grad():
        lo, hi = torch.aminmax(x)  # one pass over the tensor for both
        lo, hi = lo.clamp(max=0).float(), hi.clamp(min=0).float()
        scale = ((hi - lo) / 255).clamp_min(1e-12)
        zero = (-lo / scale).round().clamp(0, 255).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def quantized_linears(backbone: Backbone, keep_ffn_out_fp32: bool = False) -> list[str]:
    """Names (in `backbone.model`) of the projections the served int8 graph quantizes."""
    names = []
    for i, layer in enumerate(backbone._adapter.layers()):
        prefix = f"encoder.layer.{i}."
        for name, module in layer.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            ffn_out = name == "output.dense"  # BERT family: the feed-forward's second projection
            if ffn_out and keep_ffn_out_fp32:
                continue
            names.append(prefix + name)
    return names


def simulated(backbone: Backbone, keep_ffn_out_fp32: bool = False) -> Backbone:
    """A copy of `backbone` (same tokenizer and identity, its own module tree) whose layer loop
    computes in simulated int8; the original is untouched (a server may share it)."""
    if backbone.model_type not in BERT_FAMILY:
        raise BackboneError(
            f"int8 is served by the ONNX runtime, for the BERT family only ({', '.join(sorted(BERT_FAMILY))}); "
            f"this backbone is {backbone.model_type!r}"
        )
    sim = backbone.with_model(copy.deepcopy(backbone.model))  # no runtime: inference runs it too
    # packed in every batch, as the served int8 graph runs: an activation's quantization range is
    # taken over the batch's real tokens
    sim.pack_tokens, sim.pack_below_fill = True, float("inf")
    for name in quantized_linears(sim, keep_ffn_out_fp32):
        parent_name, _, attr = name.rpartition(".")
        parent = sim.model.get_submodule(parent_name)
        setattr(parent, attr, Int8Linear(getattr(parent, attr)))
    for p in sim.model.parameters():
        p.requires_grad_(False)
    return sim


def for_training(backbone: Backbone, precision: str | None, keep_ffn_out_fp32: bool = False) -> Backbone:
    """The backbone a run trains against: the simulated int8 copy for precision "int8" (made once:
    a copy passed back in is returned as it is), else `backbone` itself."""
    if precision != "int8" or getattr(backbone, "int8_simulated", False):
        return backbone
    sim = simulated(backbone, keep_ffn_out_fp32)
    sim.int8_simulated = True
    return sim
