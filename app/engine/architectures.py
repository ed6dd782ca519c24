"""How each architecture runs one encoder layer with per-row prefixes: the adapters the backbone's
layer loop calls. The BERT family (BERT, RoBERTa, ELECTRA, XLM-R, CamemBERT) share one adapter;
MPNet (relative position bias) and DeBERTa-v2/v3 (disentangled attention) have their own, where
the prefix keys carry content only (their relative-position terms are zero). Each calls the model's
own submodules (projections, layer norms, feed forward) and does only the attention step itself."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BERT_FAMILY = {"bert", "roberta", "electra", "xlm-roberta", "camembert"}
SUPPORTED_MODEL_TYPES = BERT_FAMILY | {"mpnet", "deberta-v2"}


def _additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, K] with 1 = attend -> [B, 1, 1, K] additive float mask."""
    neg = torch.finfo(dtype).min
    return (1.0 - mask.to(dtype))[:, None, None, :] * neg


class _Adapter:
    """How to run one architecture's layers with prefixes. Subclasses hold no parameters."""

    #: whether `layer` can run on packed tokens (see Packing); such adapters have no after_layer
    packs = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # each returns hidden states [B, L, H]
    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None, attention_mask: Tensor) -> Tensor:
        raise NotImplementedError

    def embed_offset(self, input_ids: Tensor, token_type_ids: Tensor | None, offset: int) -> Tensor:
        """Embeddings with the tokens numbered from `offset` on (after a prefix, as PEFT does)."""
        from app.engine.backbone import BackboneError  # the backbone's error (backbone imports this module)

        raise BackboneError(
            f"position offsets are supported on BERT-family backbones only, not {self.config.model_type!r}"
        )

    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def context(self, hidden: Tensor, attention_mask: Tensor) -> dict:
        return {}

    def layer(
        self,
        i: int,
        hidden: Tensor,
        kv: tuple[Tensor, Tensor] | None,
        key_mask: Tensor,
        ctx: dict,
        packing: Packing | None = None,
    ) -> Tensor:
        """Layer i. With `packing` (adapters whose `packs` is true) `hidden` is the packed tokens
        [N, H] and so is the result; attention alone runs on the padded [B, L] layout."""
        raise NotImplementedError

    def after_layer(self, i: int, hidden: Tensor, embedded: Tensor, attention_mask: Tensor) -> Tensor:
        return hidden


class Packing:
    """The real tokens of a padded batch as one sequence [N, H] (N: the tokens its mask keeps).

    Every step of an encoder layer but attention reads one token at a time (the projections, the
    feed-forward, the layer norms: most of the work), so those steps run on the packed tokens and
    skip the padding, which the plain forward computes and throws away. Attention takes its
    queries, keys and values back to the padded [B, L] layout, masked as before; its output is
    packed again. A token's result is the same as in the padded forward; pad positions come
    back as zeros.
    """

    def __init__(self, token_mask: Tensor, index: Tensor | None = None) -> None:
        """index: the tokens' flat positions in [B * L], when found already (a compiled graph
        takes them as an input)."""
        b, n = token_mask.shape
        self.rows, self.length = b, n
        self.index = token_mask.reshape(-1).nonzero().squeeze(1) if index is None else index

    @property
    def tokens(self) -> int:
        return self.index.shape[0]

    def pack(self, x: Tensor) -> Tensor:
        """[B, L, D] -> [N, D]"""
        return x.reshape(self.rows * self.length, x.shape[-1]).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """[N, D] -> [B, L, D], zeros at the pad positions"""
        out = x.new_zeros(self.rows * self.length, x.shape[-1])
        return out.index_copy(0, self.index, x).view(self.rows, self.length, x.shape[-1])


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _padded(x: Tensor, packing: Packing | None) -> Tensor:
    """A projection of the layer's input in the padded [B, L, D] layout attention takes."""
    return x if packing is None else packing.unpack(x)


def _packed(x: Tensor, packing: Packing | None) -> Tensor:
    """Attention's [B, L, D] output in the layout of the layer's input."""
    return x if packing is None else packing.pack(x)


class _BertFamily(_Adapter):
    def embed(self, input_ids, token_type_ids, attention_mask):
        out = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        project = getattr(self.model, "embeddings_project", None)  # ELECTRA
        return project(out) if project is not None else out

    def embed_offset(self, input_ids, token_type_ids, offset):
        # the models' own numbering after a cache of `offset` tokens (RoBERTa: from the padding id on)
        out = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, cache_length=offset)
        project = getattr(self.model, "embeddings_project", None)
        return project(out) if project is not None else out

    packs = True

    def layer(self, i, hidden, kv, key_mask, ctx, packing=None):
        layer = self.layers()[i]
        sa = layer.attention.self
        heads = sa.num_attention_heads
        q, k, v = (_padded(f(hidden), packing) for f in (sa.query, sa.key, sa.value))
        if kv is not None:
            k = torch.cat([kv[0], k], dim=1)
            v = torch.cat([kv[1], v], dim=1)
        q, k, v = _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
        p = sa.dropout.p if self.model.training else 0.0
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=_additive_mask(key_mask, q.dtype), dropout_p=p
        )
        attn_out = layer.attention.output(_packed(_merge_heads(attn), packing), hidden)
        return layer.output(layer.intermediate(attn_out), attn_out)


class _MPNet(_Adapter):
    def embed(self, input_ids, token_type_ids, attention_mask):
        return self.model.embeddings(input_ids=input_ids)

    def context(self, hidden, attention_mask):
        return {"bias": self.model.encoder.compute_position_bias(hidden)}

    packs = True

    def layer(self, i, hidden, kv, key_mask, ctx, packing=None):
        layer = self.layers()[i]
        a = layer.attention.attn
        heads = a.num_attention_heads
        q, k, v = (_padded(f(hidden), packing) for f in (a.q, a.k, a.v))
        bias = ctx["bias"]
        if kv is not None:
            k = torch.cat([kv[0], k], dim=1)
            v = torch.cat([kv[1], v], dim=1)
            bias = F.pad(bias, (kv[0].shape[1], 0))  # prefix keys: no position bias
        q, k, v = _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
        mask = bias + _additive_mask(key_mask, q.dtype)
        p = a.dropout.p if self.model.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        o = a.o(_packed(_merge_heads(attn), packing))
        attn_out = layer.attention.LayerNorm(layer.attention.dropout(o) + hidden)
        return layer.output(layer.intermediate(attn_out), attn_out)


class _DebertaV2(_Adapter):
    def embed(self, input_ids, token_type_ids, attention_mask):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=attention_mask)

    def context(self, hidden, attention_mask):
        enc = self.model.encoder
        return {"rel_pos": enc.get_rel_pos(hidden), "rel_emb": enc.get_rel_embedding()}

    def layer(self, i, hidden, kv, key_mask, ctx, packing=None):  # never packed (packs is false)
        layer = self.layers()[i]
        sa = layer.attention.self
        heads = sa.num_attention_heads
        q = sa.transpose_for_scores(sa.query_proj(hidden), heads)  # [B*h, L, d]
        k = sa.transpose_for_scores(sa.key_proj(hidden), heads)
        v = sa.transpose_for_scores(sa.value_proj(hidden), heads)
        scale_factor = 1 + ("c2p" in sa.pos_att_type) + ("p2c" in sa.pos_att_type)
        scale = math.sqrt(q.size(-1) * scale_factor)
        scores = torch.bmm(q, k.transpose(-1, -2) / scale)
        if sa.relative_attention:
            rel_emb = sa.pos_dropout(ctx["rel_emb"])
            scores = scores + sa.disentangled_attention_bias(q, k, ctx["rel_pos"], rel_emb, scale_factor)
        if kv is not None:
            pk = sa.transpose_for_scores(kv[0], heads)
            pv = sa.transpose_for_scores(kv[1], heads)
            scores = torch.cat([torch.bmm(q, pk.transpose(-1, -2) / scale), scores], dim=-1)
            v = torch.cat([pv, v], dim=1)
        b = hidden.shape[0]
        scores = scores.view(b, heads, scores.size(-2), scores.size(-1))
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], torch.finfo(q.dtype).min)
        probs = sa.dropout(F.softmax(scores, dim=-1))
        ctx_layer = torch.bmm(probs.view(b * heads, probs.size(-2), probs.size(-1)), v)
        ctx_layer = ctx_layer.view(b, heads, ctx_layer.size(-2), ctx_layer.size(-1))
        attn_out = layer.attention.output(_merge_heads(ctx_layer), hidden)
        return layer.output(layer.intermediate(attn_out), attn_out)

    def after_layer(self, i, hidden, embedded, attention_mask):
        conv = self.model.encoder.conv
        if i == 0 and conv is not None:
            return conv(embedded, hidden, attention_mask)
        return hidden


ADAPTERS = {t: _BertFamily for t in BERT_FAMILY} | {"mpnet": _MPNet, "deberta-v2": _DebertaV2}
