"""From raw records to features (prepare) and from logits to predictions (finish).

The server splits these two steps around its batcher so rows of many requests, of many tasks,
share one backbone forward; `predict` runs both for a single task, as a library call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from app.engine import data as D
from app.engine import tasks
from app.engine.batch import collate, mixed_forward, task_forward
from app.engine.model import ServingTask, TaskSpec


@dataclass
class Prepared:
    task_type: str
    examples: list
    features: list[dict]


def effective_max_length(spec: TaskSpec, tokenizer, backbone_max: int | None = None) -> int:
    limit = spec.max_length
    if backbone_max:  # a task whose positions start after its prefix (PEFT's) has fewer left
        limit = min(limit, backbone_max - spec.position_offset)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 10**6:
        limit = min(limit, int(tok_max))
    return limit


def encode_examples(
    spec: TaskSpec, tokenizer, examples: Sequence, *, with_labels: bool, max_length: int | None = None
) -> list[dict]:
    """Encode parsed examples for a task spec (targets included when with_labels)."""
    max_len = max_length or effective_max_length(spec, tokenizer)
    label2id = {lab: i for i, lab in enumerate(spec.labels)} if with_labels else None
    return tasks.get(spec.task_type).encode(spec, tokenizer, examples, label2id, max_len)


def _check_length(
    spec: TaskSpec, tokenizer, examples: Sequence, max_len: int, clipped: Sequence | None = None
) -> None:
    """Refuse inputs longer than the task's max_length (the 'refuse' overflow rule). `clipped`: the
    examples cut by TaskType.clip (checked instead; a cut one is "at least" its tokens long)."""
    task = tasks.get(spec.task_type)
    for i, ex in enumerate(clipped if clipped is not None else examples):
        found = task.input_length(spec, tokenizer, ex)
        if found is None:
            return  # e.g. long QA contexts are split into windows, never refused
        n, field = found
        if n > max_len:
            size = f"at least {n}" if clipped is not None and examples[i] is not ex else str(n)
            raise D.DataError(
                f"input is {size} tokens long; the task takes at most {max_len}", line=i + 1, field=field
            )


def prepare(
    task: ServingTask,
    tokenizer,
    records: Sequence[dict],
    *,
    overflow: str = "truncate",
    backbone_max: int | None = None,
) -> Prepared:
    """Validate and encode prediction inputs. Raises DataError naming the input (line = index + 1)."""
    spec = task.spec
    examples = D.parse_records(records, spec.task_type, require_labels=False)
    max_len = effective_max_length(spec, tokenizer, backbone_max)
    # overlong texts are cut before they are tokenised whole (same features: TaskType.clip)
    kind = tasks.get(spec.task_type)
    clipped = [kind.clip(spec, tokenizer, ex, max_len) for ex in examples]
    if overflow == "refuse":
        _check_length(spec, tokenizer, examples, max_len, clipped)
    features = encode_examples(spec, tokenizer, clipped, with_labels=False, max_length=max_len)
    return Prepared(spec.task_type, examples, features)


def finish(task: ServingTask, prepared: Prepared, logits: Sequence[Tensor]) -> list[dict]:
    """Turn per-feature logits into one prediction per input."""
    spec = task.spec
    return tasks.get(spec.task_type).decode(spec, prepared.examples, prepared.features, logits)


def run_features(backbone, task: ServingTask, features: list[dict], batch_size: int = 32) -> list[Tensor]:
    """Per-feature logits of one task, in batches sorted by length to cut padding."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[Tensor | None] = [None] * len(features)
    pad = backbone.tokenizer.pad_token_id or 0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = collate([features[i] for i in idx], pad, backbone.device)
        if task.finetuned is not None:
            rows = list(task_forward(task, backbone, batch))
        else:
            rows = mixed_forward(backbone, [task] * len(idx), batch)
        for i, r in zip(idx, rows, strict=True):
            n = len(features[i]["input_ids"])
            out[i] = (r[:n] if r.dim() == 2 else r).cpu()  # per-token rows lose their padding
    return out  # type: ignore[return-value]


def predict(
    backbone, task: ServingTask, records: Sequence[dict], batch_size: int = 32, overflow: str = "truncate"
) -> list[dict]:
    prepared = prepare(
        task, backbone.tokenizer, records, overflow=overflow, backbone_max=backbone.max_positions
    )
    logits = run_features(backbone, task, prepared.features, batch_size)
    return finish(task, prepared, logits)
