"""Sentence embeddings from the shared frozen backbone, as rows of the same mixed batches.

An embedding row is a row of a pseudo-task whose "head" mean-pools the last hidden states over
the row's real tokens (attention-mask weighted, padding out; a task's K/V prefix or input prompt
is never among the hidden states), exactly as sentence-transformers' Pooling(mode="mean") does
for all-MiniLM-L6-v2; `finish` L2-normalises as its Normalize module does. Plain embeddings use
a task without a prefix; task-conditioned ones use the task's own prefix (or input prompt) and
position numbering with the pooling head in place of the task's head.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine.data import DataError
from app.engine.model import ServingTask, TaskSpec

EMBEDDING = "embedding"  # the pseudo task type of embedding rows


class MeanPool(nn.Module):
    """Attention-mask-weighted mean of the token states: [B, L, H], [B, L] -> [B, H]."""

    pools = True  # engine.batch.mixed_forward passes the rows' attention mask

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def plain_task() -> ServingTask:
    """Embedding rows without a task: the backbone alone, no prefix."""
    return ServingTask(spec=TaskSpec(task_type=EMBEDDING), head=MeanPool())


def conditioned_task(task: ServingTask) -> ServingTask:
    """Embedding rows through `task`'s prefix (its prompt, layers and position numbering)."""
    if task.finetuned is not None:
        raise ValueError("a fully fine-tuned task carries its own encoder: it gives no embeddings here")
    return dataclasses.replace(task, head=MeanPool())


def max_tokens(backbone, task: ServingTask | None = None) -> int:
    """The longest input an embedding takes, in tokens: the backbone's sentence-transformers
    `max_seq_length` when it ships one (256 for all-MiniLM-L6-v2), else its position limit; a task
    whose positions start after its prefix has that many fewer."""
    limit = backbone.max_positions
    source = getattr(backbone, "source", None)
    cfg = Path(source) / "sentence_bert_config.json" if source else None
    if cfg is not None and cfg.is_file():
        try:
            limit = min(limit, int(json.loads(cfg.read_text())["max_seq_length"]))
        except (ValueError, KeyError, TypeError):
            pass
    if task is not None:
        limit = min(limit, backbone.max_positions - task.spec.position_offset)
    return limit


def encode(tokenizer, texts: Sequence[str], max_len: int, *, overflow: str = "truncate") -> list[dict]:
    """One feature a text: its token ids, truncated to max_len (overflow="refuse": a DataError
    naming the text instead, line = index + 1)."""
    features = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError("expected a string", line=i + 1)
        enc = tokenizer(text, truncation=overflow != "refuse", max_length=max_len)
        n = len(enc["input_ids"])
        if n > max_len:
            raise DataError(f"input is {n} tokens long; embeddings take at most {max_len}", line=i + 1)
        features.append({"input_ids": list(enc["input_ids"]), "token_type_ids": enc.get("token_type_ids")})
    return features


def finish(pooled: Sequence[Tensor], normalize: bool = True) -> list[Tensor]:
    """The pooled rows, L2-normalised unless asked not to (float32, on the CPU)."""
    out = []
    for v in pooled:
        v = v.float().cpu()
        out.append(F.normalize(v, p=2, dim=0) if normalize else v)
    return out


@torch.no_grad()
def embed(
    backbone,
    texts: Sequence[str],
    task: ServingTask | None = None,
    *,
    normalize: bool = True,
    batch_size: int = 32,
) -> Tensor:
    """Embeddings of `texts` as a library call (the server runs the same rows through its batcher)."""
    from app.engine.batch import collate, mixed_forward

    row_task = plain_task() if task is None else conditioned_task(task)
    features = encode(backbone.tokenizer, texts, max_tokens(backbone, task))
    pad = backbone.tokenizer.pad_token_id or 0
    pooled: list[Tensor] = []
    for s in range(0, len(features), batch_size):
        part = features[s : s + batch_size]
        batch = collate(part, pad, backbone.device)
        pooled += mixed_forward(backbone, [row_task] * len(part), batch)
    return torch.stack(finish(pooled, normalize))
