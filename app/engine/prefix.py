"""Trainable prompts: deep per-layer K/V prefixes (P-Tuning v2) and shallow input prompts.

PrefixEncoder follows the paper: either the flat K/V are the parameters, or (reparameterised)
an embedding of the prefix positions goes through Linear -> tanh -> Linear to produce them.
After training `fold()` returns the flat K/V; the MLP is not stored or served.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn


class LayerSpecError(ValueError):
    pass


def parse_layers(spec: str | list[int] | None, num_layers: int) -> list[int]:
    """Which layers carry a prefix.

    "all" (default), "lower-half", "upper-half", "first:N", "last:N", or a list such as
    "0-2,5" / [0, 1, 2, 5]. Indices are 0-based and must lie in [0, num_layers).
    """
    if spec is None or spec == "" or spec == "all":
        return list(range(num_layers))
    if isinstance(spec, list | tuple):
        layers = sorted({int(i) for i in spec})
    else:
        s = spec.strip().lower()
        half = num_layers // 2
        if s == "lower-half":
            layers = list(range(half))
        elif s == "upper-half":
            layers = list(range(num_layers - half, num_layers))
        elif m := re.fullmatch(r"(first|last):(\d+)", s):
            n = int(m.group(2))
            if not 1 <= n <= num_layers:
                raise LayerSpecError(f"layers {spec!r}: N must be between 1 and {num_layers}")
            layers = list(range(n)) if m.group(1) == "first" else list(range(num_layers - n, num_layers))
        else:
            layers = set()
            for part in s.split(","):
                part = part.strip()
                if m := re.fullmatch(r"(\d+)-(\d+)", part):
                    a, b = int(m.group(1)), int(m.group(2))
                    if a > b:
                        raise LayerSpecError(f"layers {spec!r}: range {part!r} is reversed")
                    layers.update(range(a, b + 1))
                elif part.isdigit():
                    layers.add(int(part))
                else:
                    raise LayerSpecError(
                        f"layers {spec!r}: expected 'all', 'lower-half', 'upper-half', 'first:N', "
                        "'last:N' or a list like '0-2,5'"
                    )
            layers = sorted(layers)
    if not layers:
        raise LayerSpecError(f"layers {spec!r}: selects no layer")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise LayerSpecError(
            f"layers {spec!r}: {bad} out of range, the backbone has layers 0-{num_layers - 1}"
        )
    return layers


class PrefixEncoder(nn.Module):
    """Produces K/V prefixes [n_layers, 2, prefix_length, kv_size] for the chosen layers."""

    def __init__(
        self,
        n_layers: int,
        kv_size: int,
        prefix_length: int,
        reparameterize: bool = False,
        reparam_hidden: int = 512,
        embed_size: int | None = None,
        dropout: float = 0.0,
        init_std: float = 1.0,
    ):
        super().__init__()
        if prefix_length < 1:
            raise ValueError("prefix_length must be >= 1")
        self.n_layers = n_layers
        self.kv_size = kv_size
        self.prefix_length = prefix_length
        self.reparameterize = reparameterize
        out = n_layers * 2 * kv_size
        if reparameterize:
            self.embedding = nn.Embedding(prefix_length, embed_size or kv_size)
            self.mlp = nn.Sequential(
                nn.Linear(embed_size or kv_size, reparam_hidden),
                nn.Tanh(),
                nn.Linear(reparam_hidden, out),
            )
        else:
            self.weight = nn.Parameter(torch.randn(prefix_length, out) * init_std)
        self.dropout = nn.Dropout(dropout)

    def raw(self) -> Tensor:
        if self.reparameterize:
            idx = torch.arange(self.prefix_length, device=self.embedding.weight.device)
            flat = self.mlp(self.embedding(idx))
        else:
            flat = self.weight
        # [P, n_layers * 2 * kv] -> [n_layers, 2, P, kv]
        return flat.view(self.prefix_length, self.n_layers, 2, self.kv_size).permute(1, 2, 0, 3)

    def forward(self) -> Tensor:
        return self.dropout(self.raw())

    @torch.no_grad()
    def fold(self) -> Tensor:
        """The flat K/V the trained encoder produces, without dropout: what is stored and served."""
        return self.raw().detach().clone().contiguous()

    @torch.no_grad()
    def load_flat(self, kv: Tensor) -> None:
        """Start from flat K/V (e.g. a shared multi-task prefix). Only for the flat form."""
        if self.reparameterize:
            raise ValueError("cannot load flat K/V into a reparameterised prefix encoder")
        expected = (self.n_layers, 2, self.prefix_length, self.kv_size)
        if tuple(kv.shape) != expected:
            raise ValueError(f"prefix shape {tuple(kv.shape)} does not match {expected}")
        self.weight.copy_(kv.permute(2, 0, 1, 3).reshape(self.prefix_length, -1))


class InputPrompt(nn.Module):
    """Shallow prompt tuning (Lester et al. 2021): trainable embeddings at the input only."""

    def __init__(self, prompt_length: int, hidden_size: int, init: Tensor | None = None):
        super().__init__()
        if init is not None:
            self.weight = nn.Parameter(init.detach().clone())
        else:
            self.weight = nn.Parameter(torch.randn(prompt_length, hidden_size) * 0.02)

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    def forward(self, batch_size: int) -> Tensor:
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)
