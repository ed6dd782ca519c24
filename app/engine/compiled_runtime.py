"""torch.compile as a runtime for the frozen backbone's layer loop (PROMPTHUB_RUNTIME=compile).

Inductor compiles the same adapter calls the eager loop makes (so every supported architecture),
with the frozen weights folded into the graph (inductor's ``freezing``: constants and, on a CPU,
prepacked oneDNN weights). The batch, length and prefix axes are dynamic; the others (layers,
hidden size) are static. As in the ONNX runtime, every layer gets the prefix slots and masks the
ones a row does not use, and a batch with fewer than two slots (no prefix at all, or one-slot
prefixes) gets masked slots up to two: exp(min - max) is exactly 0, so a masked slot changes
nothing, and one graph serves every mix of tasks. On architectures that pack (BERT family, MPNet)
the loop packs every batch's tokens (architectures.Packing; the positions are found outside the
graph and passed in, a dynamic axis of their own). torch.compile specialises sizes 0 and 1, so a
one-row batch has a graph of its own; `warm_up` compiles both when the runtime is attached, not on
a request.

Graphs are compiled for the serving path: forwards under ``torch.inference_mode`` (the batcher's),
whose tensors carry no autograd state (an input made outside it is copied into one). Any other
inference call (``torch.no_grad``: evaluation while training, the CLI) runs the eager loop, so it
never compiles a graph on the side.

The profile behind it (docs/benchmarks.md, "The torch layer loop"): in the eager mixed forward on
MiniLM the projections' GEMMs take about 80% of the time, the prefix gather and per-layer
concatenations a few percent; the compiled loop fuses the element-wise work around the GEMMs and
prepacks their weights.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from app.engine.architectures import Packing
from app.engine.backbone import Backbone, PrefixBatch

log = logging.getLogger(__name__)

#: the fewest prefix slots a compiled call gets (sizes 0 and 1 would each compile a graph)
MIN_SLOTS = 2


class CompiledLayerLoop:
    """The backbone's layer loop through torch.compile; call it like the eager loop's part of
    Backbone.forward (inference only: Backbone.forward uses it without grad, outside training)."""

    path = None  # no file (the ONNX runtime reports its graph's)

    def __init__(self, backbone: Backbone, freeze: bool = True) -> None:
        self.precision = backbone.precision
        self.compile_seconds = 0.0
        self.compiled_calls = 0
        self.eager_calls = 0
        adapter = backbone._adapter
        n_layers = backbone.num_layers

        #: the real tokens only through the per-token work (architectures.Packing), in every batch:
        #: one graph, and in a compiled loop the gather and scatter cost little even without padding
        self.packs = adapter.packs and backbone.pack_tokens

        def loop(
            hidden: Tensor, token_mask: Tensor, kv: Tensor, prefix_mask: Tensor, index: Tensor
        ) -> Tensor:
            ctx = adapter.context(hidden, token_mask)
            packing = Packing(token_mask, index) if self.packs else None
            embedded = hidden
            if packing is not None:
                hidden = packing.pack(hidden)
            for i in range(n_layers):
                key_mask = torch.cat([prefix_mask[i], token_mask], dim=1)
                hidden = adapter.layer(i, hidden, (kv[i, 0], kv[i, 1]), key_mask, ctx, packing)
                hidden = adapter.after_layer(i, hidden, embedded, token_mask)  # (none where it packs)
            return packing.unpack(hidden) if packing is not None else hidden

        import torch._inductor.config as inductor_config

        self._inductor_config = inductor_config
        self._freeze = freeze
        self._loop = torch.compile(loop, dynamic=False)

    def __call__(
        self, backbone: Backbone, hidden: Tensor, token_mask: Tensor, prefix: PrefixBatch | None
    ) -> Tensor:
        if not torch.is_inference_mode_enabled():
            self.eager_calls += 1
            return backbone.layer_loop(hidden, token_mask, prefix)
        kv, mask = padded_prefix(backbone, hidden, prefix)
        # the packed tokens' positions (found here: a data-dependent size inside the graph would
        # break it); a one-element stand-in when the loop does not pack
        index = Packing(token_mask).index if self.packs else token_mask.new_zeros(1)
        # the graphs take inference tensors only (their guards check it): an input made before
        # inference mode (the masks of a batch collated outside it) is copied, which is cheap
        inputs = tuple(
            t if t.is_inference() else t.clone()
            for t in (hidden, token_mask, kv, mask.to(token_mask.dtype), index)
        )
        for t, dims in zip(inputs, _DYNAMIC_DIMS, strict=True):
            for d in dims:
                torch._dynamo.maybe_mark_dynamic(t, d)
        self.compiled_calls += 1
        # inductor reads `freezing` when it compiles (the first call of a new graph); as a
        # torch.compile option it did not reach the weight prepacking (measured: 1.12x -> 1.19x)
        with self._inductor_config.patch(freezing=self._freeze):
            return self._loop(*inputs)

    def warm_up(self, backbone: Backbone) -> float:
        """Compile the many-row and the one-row graph now; returns the seconds it took. The sizes
        (batch 3, length 5, 2 slots, 12 tokens) differ from each other, so no two axes share a
        symbol (one row has as many tokens as its length, whatever the batch)."""
        t0 = time.monotonic()
        device = backbone.device
        with torch.inference_mode():
            for rows in (3, 1):
                ids = torch.full((rows, 5), 1, dtype=torch.long, device=device)
                mask = (
                    torch.arange(5, device=device) < torch.arange(5, 5 - rows, -1, device=device)[:, None]
                ).long()
                hidden = backbone._adapter.embed(ids, None, mask)
                self(backbone, hidden, mask, None)
        self.compile_seconds = time.monotonic() - t0
        return self.compile_seconds


#: the dynamic axes of the loop's inputs: hidden [B, L, H], token_mask [B, L],
#: kv [layers, 2, B, P, kv], prefix_mask [layers, B, P], index [tokens]
_DYNAMIC_DIMS = ((0, 1), (0, 1), (2, 3), (1, 2), (0,))


def padded_prefix(backbone: Backbone, hidden: Tensor, prefix: PrefixBatch | None) -> tuple[Tensor, Tensor]:
    """(kv [N, 2, B, P, kv] in the hidden states' dtype, mask [N, B, P]) with P >= MIN_SLOTS; the
    added slots are masked."""
    if prefix is None:
        n, b = backbone.num_layers, hidden.shape[0]
        kv = hidden.new_zeros(n, 2, b, MIN_SLOTS, backbone.kv_size)
        return kv, hidden.new_zeros(n, b, MIN_SLOTS)
    kv, mask = prefix.kv.to(hidden.dtype), prefix.mask
    short = MIN_SLOTS - kv.shape[3]
    if short > 0:
        kv = F.pad(kv, (0, 0, 0, short))
        mask = F.pad(mask, (0, short))
    return kv, mask


def require_compiler(device: torch.device) -> None:
    """On a CPU, inductor builds its kernels with a C++ compiler: say so at start-up, with the fix,
    rather than fail inside the first compilation."""
    if device.type != "cpu":
        return
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise RuntimeError(
            "PROMPTHUB_RUNTIME=compile needs a C++ compiler on a CPU (inductor builds its kernels with "
            "it) and none was found (g++, or the one the CXX environment variable names): install one "
            "(Debian/Ubuntu: apt-get install g++; the Docker image: build it with --build-arg "
            "COMPILER=1), or serve with PROMPTHUB_RUNTIME=torch or onnx"
        ) from None


def attach(backbone: Backbone, freeze: bool = True, warm_up: bool = True) -> CompiledLayerLoop:
    """Make `backbone`'s inference forwards run through a compiled layer loop (compiled now when
    `warm_up`)."""
    require_compiler(backbone.device)
    runner = CompiledLayerLoop(backbone, freeze=freeze)
    backbone.runtime = runner
    if warm_up:
        seconds = runner.warm_up(backbone)
        log.info("backbone %s: compiled layer loop ready in %.1f s", backbone.name, seconds)
    return runner
