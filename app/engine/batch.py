"""Padding features into tensors, and one backbone forward over rows of different tasks.

In a mixed batch each row carries its own task's prefix. Prefixes are gathered layer-major
([num_layers, 2, batch, P_max, kv]) so that each layer's slice is contiguous; shorter prefixes
and layers a task leaves out are masked, so every row sees exactly what its single-task forward
sees. Input prompts (shallow prompt tuning) are right-aligned against the tokens and masked the
same way. Each row then goes through its own task's head; a pooling head (app.engine.embed's
mean pooling, for embedding rows) also gets the rows' attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from app.engine.backbone import Backbone, PrefixBatch
from app.engine.heads import FrozenHead
from app.engine.model import ServingTask


def collate(
    features: Sequence[dict], pad_id: int, device: str | torch.device = "cpu", multiple: int = 1
) -> dict[str, Tensor]:
    """Pad a list of encoded features (lists of ints) into input tensors; training targets are
    the task type's (tasks.get(...).targets). `multiple`: pad the length up to a multiple of it
    (static shapes per length bucket on a GPU). For a CUDA device the tensors are staged in
    pinned host memory and copied without blocking."""
    n = len(features)
    length = max(len(f["input_ids"]) for f in features)
    if multiple > 1:
        length = -(-length // multiple) * multiple
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((n, length), dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    for i, f in enumerate(features):
        m = len(f["input_ids"])
        input_ids[i, :m] = torch.tensor(f["input_ids"], dtype=torch.long)
        if f.get("token_type_ids") is not None:
            token_type_ids[i, :m] = torch.tensor(f["token_type_ids"], dtype=torch.long)
        attention_mask[i, :m] = 1
    out = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    if torch.device(device).type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in out.items()}
    return {k: v.to(device) for k, v in out.items()}


def length_buckets(lengths: Sequence[int], overhead_tokens: float) -> list[tuple[int, int]]:
    """Split rows sorted by length into contiguous forwards that waste the least compute.

    A forward over rows i..j-1 costs about (j - i) * lengths[j-1] padded tokens plus a fixed
    `overhead_tokens` (the launch/dispatch cost of one more forward, in tokens). Returns the
    (start, end) ranges of the cheapest split (exact, O(n^2) over a batch of n rows). With
    mixed lengths this removes most of the padding; `overhead_tokens` large keeps one forward.
    """
    n = len(lengths)
    if n <= 1 or overhead_tokens == float("inf"):
        return [(0, n)] if n else []
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        top = lengths[j - 1]
        for i in range(j):
            c = best[i] + (j - i) * top + overhead_tokens
            if c < best[j]:
                best[j], cut[j] = c, i
    out = []
    j = n
    while j > 0:
        out.append((cut[j], j))
        j = cut[j]
    return out[::-1]


def build_prefix_batch(tasks: Sequence[ServingTask], num_layers: int, kv_size: int) -> PrefixBatch | None:
    """Layer-major prefixes for rows whose tasks are `tasks` (one entry a row)."""
    lengths = [t.prefix_length for t in tasks]
    p_max = max(lengths, default=0)
    if p_max == 0:
        return None
    ref = next(t.kv for t in tasks if t.kv is not None)
    b = len(tasks)
    kv = ref.new_zeros(num_layers, 2, b, p_max, kv_size)
    mask = ref.new_zeros(num_layers, b, p_max)
    for rows in _group(tasks).values():
        t = tasks[rows[0]]
        if t.kv is None:
            continue
        p = t.prefix_length
        idx = torch.tensor(rows, device=ref.device)
        kv[:, :, idx, :p] = t.kv.unsqueeze(2)
        mask[:, idx, :p] = t.layer_mask.to(mask.dtype)[:, None, None]
    return PrefixBatch(kv, mask)


def build_input_prompts(tasks: Sequence[ServingTask], hidden_size: int) -> tuple[Tensor, Tensor] | None:
    lengths = [t.prompt_length for t in tasks]
    p_max = max(lengths, default=0)
    if p_max == 0:
        return None
    ref = next(t.prompt for t in tasks if t.prompt is not None)
    prompts = ref.new_zeros(len(tasks), p_max, hidden_size)
    mask = ref.new_zeros(len(tasks), p_max)
    for i, t in enumerate(tasks):
        if t.prompt is not None:
            p = t.prompt_length
            prompts[i, p_max - p :] = t.prompt  # right-aligned: adjacent to the tokens
            mask[i, p_max - p :] = 1.0
    return prompts, mask


def _group(tasks: Sequence[ServingTask]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(id(t), []).append(i)
    return groups


@torch.no_grad()
def mixed_forward(backbone: Backbone, tasks: Sequence[ServingTask], batch: dict[str, Tensor]) -> list[Tensor]:
    """One backbone forward for rows of any tasks; row i goes through tasks[i]'s head.

    Returns one logits tensor per row (its head's output: [C] or [L, C] over the row's padded length).
    """
    if len(tasks) != batch["input_ids"].shape[0]:
        raise ValueError("one task per row is needed")
    if any(t.finetuned is not None for t in tasks):
        raise ValueError("fully fine-tuned tasks carry their own encoder and cannot share a batch")
    prefix = build_prefix_batch(tasks, backbone.num_layers, backbone.kv_size)
    prompts = build_input_prompts(tasks, backbone.hidden_size)
    offsets = [t.spec.position_offset for t in tasks]
    token_types = batch.get("token_type_ids")
    one_segment = [i for i, t in enumerate(tasks) if not t.spec.segment_ids]
    if token_types is not None and one_segment:  # rows of tasks that read every token as segment 0
        token_types = token_types.clone()
        token_types[one_segment] = 0
    hidden = backbone(
        batch["input_ids"],
        batch["attention_mask"],
        token_types,
        prefix=prefix,
        input_prompts=prompts[0] if prompts else None,
        input_prompt_mask=prompts[1] if prompts else None,
        position_offsets=offsets if any(offsets) else None,
    )
    if hidden.dtype != torch.float32:
        hidden = hidden.float()  # half-precision backbone, fp32 heads
    out: list[Tensor | None] = [None] * len(tasks)
    for rows in _group(tasks).values():
        head = tasks[rows[0]].head
        if getattr(head, "pools", False):  # a pooling head (embeddings) reads the rows' token mask
            logits = head(hidden[rows], batch["attention_mask"][rows])
        elif isinstance(head, FrozenHead) and head.position is not None:
            # a pooled head reads one position: gather [rows, H], not the rows' whole sequences
            logits = F.linear(hidden[rows, head.position], head.weight, head.bias)
        else:
            logits = head(hidden[rows])
        for j, r in enumerate(rows):
            out[r] = logits[j]
    return out  # type: ignore[return-value]


@torch.no_grad()
def task_forward(task: ServingTask, backbone: Backbone, batch: dict[str, Tensor]) -> Tensor:
    """Single-task forward of a served task (also fully fine-tuned ones) -> batched logits."""
    if task.finetuned is not None:
        hidden = task.finetuned(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return task.head(hidden)
    rows = mixed_forward(backbone, [task] * batch["input_ids"].shape[0], batch)
    return torch.stack(rows)
