"""From raw records to features (prepare) and from logits to predictions (finish).

The server splits these two steps around its batcher so rows of many requests, of many tasks,
share one backbone forward; `predict` runs both for a single task, as a library call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from app.engine import data as D
from app.engine.batch import collate, mixed_forward, task_forward
from app.engine.heads import VERBALIZER_MASK_POSITION
from app.engine.model import ServingTask, TaskSpec


@dataclass
class Prepared:
    task_type: str
    examples: list
    features: list[dict]


def effective_max_length(spec: TaskSpec, tokenizer, backbone_max: int | None = None) -> int:
    limit = spec.max_length
    if backbone_max:
        limit = min(limit, backbone_max)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 10**6:
        limit = min(limit, int(tok_max))
    return limit


def encode_examples(
    spec: TaskSpec, tokenizer, examples: Sequence, *, with_labels: bool, max_length: int | None = None
) -> list[dict]:
    """Encode parsed examples for a task spec (labels as ids when with_labels)."""
    max_len = max_length or effective_max_length(spec, tokenizer)
    label2id = {lab: i for i, lab in enumerate(spec.labels)} if with_labels else None
    if spec.task_type == "classification":
        if spec.head == "verbalizer":
            feats = D.encode_classification(tokenizer, examples, label2id, max_len - 1)
            mask_id = tokenizer.mask_token_id
            for f in feats:  # "[CLS] [MASK] text [SEP]": the head reads position 1
                f["input_ids"].insert(VERBALIZER_MASK_POSITION, mask_id)
                f["token_type_ids"].insert(VERBALIZER_MASK_POSITION, 0)
            return feats
        return D.encode_classification(tokenizer, examples, label2id, max_len)
    if spec.task_type == "token-classification":
        return D.encode_tokens(tokenizer, examples, label2id, max_len)
    return D.encode_qa(tokenizer, examples, max_len, min(spec.doc_stride, max_len // 2))


def _check_length(spec: TaskSpec, tokenizer, examples: Sequence, max_len: int) -> None:
    """Refuse inputs longer than the task's max_length (the 'refuse' overflow rule)."""
    for i, ex in enumerate(examples):
        if spec.task_type == "classification":
            n = len(tokenizer(ex.text, ex.text_pair)["input_ids"]) + (spec.head == "verbalizer")
            field = "text"
        elif spec.task_type == "token-classification":
            n = len(tokenizer(ex.tokens, is_split_into_words=True)["input_ids"])
            field = "tokens" if ex.text is None else "text"
        else:
            return  # long QA contexts are split into windows, never refused
        if n > max_len:
            raise D.DataError(f"input is {n} tokens long; the task takes at most {max_len}", line=i + 1, field=field)


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
    if overflow == "refuse":
        _check_length(spec, tokenizer, examples, max_len)
    features = encode_examples(spec, tokenizer, examples, with_labels=False, max_length=max_len)
    return Prepared(spec.task_type, examples, features)


def _softmax_row(logits: Tensor) -> list[float]:
    return torch.softmax(logits.float(), dim=-1).tolist()


def finish(task: ServingTask, prepared: Prepared, logits: Sequence[Tensor]) -> list[dict]:
    """Turn per-feature logits into one prediction per input."""
    spec = task.spec
    if spec.task_type == "classification":
        out = []
        for row in logits:
            probs = _softmax_row(row)
            best = max(range(len(probs)), key=probs.__getitem__)
            out.append(
                {
                    "label": spec.labels[best],
                    "score": probs[best],
                    "scores": {lab: p for lab, p in zip(spec.labels, probs, strict=True)},
                }
            )
        return out
    if spec.task_type == "token-classification":
        return [_finish_tokens(spec, ex, f, row) for ex, f, row in zip(prepared.examples, prepared.features, logits, strict=True)]
    return _finish_qa(spec, prepared, logits)


def word_tags(spec: TaskSpec, feature: dict, row: Tensor) -> list[str]:
    """The tag of each word: the prediction at its first word piece; words cut by truncation get 'O'."""
    pred = row.argmax(dim=-1).tolist()
    tags: list[str] = []
    prev = None
    for pos, w in enumerate(feature["word_ids"]):
        if w is not None and w != prev:
            tags.append(spec.labels[pred[pos]])
        prev = w
    fill = "O" if "O" in spec.labels else spec.labels[0]
    return tags + [fill] * (feature["n_words"] - len(tags))


def _finish_tokens(spec: TaskSpec, ex: D.TokenExample, feature: dict, row: Tensor) -> dict:
    tags = word_tags(spec, feature, row)
    if ex.text is not None and ex.offsets is not None:
        text, offsets = ex.text, ex.offsets
    else:  # tokens given: offsets refer to the tokens joined by single spaces
        text, offsets, pos = " ".join(ex.tokens), [], 0
        for tok in ex.tokens:
            offsets.append((pos, pos + len(tok)))
            pos += len(tok) + 1
    return {
        "tokens": list(ex.tokens),
        "tags": tags,
        "entities": D.spans_with_offsets(tags, offsets, text),
        "truncated": feature["n_words_kept"] < feature["n_words"],
    }


def _finish_qa(spec: TaskSpec, prepared: Prepared, logits: Sequence[Tensor]) -> list[dict]:
    starts = [row[:, 0].float().cpu().numpy() for row in logits]
    ends = [row[:, 1].float().cpu().numpy() for row in logits]
    preds = D.postprocess_qa(
        prepared.examples,
        prepared.features,
        starts,
        ends,
        max_answer_length=spec.max_answer_length,
        allow_no_answer=spec.allow_no_answer,
    )
    return [
        {"id": p["id"], "answer": p["text"], "start": p["start"], "end": p["end"], "score": p["score"]}
        for p in preds
    ]


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
            out[i] = (r[:n] if r.dim() == 2 else r).cpu()
    return out  # type: ignore[return-value]


def predict(backbone, task: ServingTask, records: Sequence[dict], batch_size: int = 32, overflow: str = "truncate") -> list[dict]:
    prepared = prepare(task, backbone.tokenizer, records, overflow=overflow, backbone_max=backbone.max_positions)
    logits = run_features(backbone, task, prepared.features, batch_size)
    return finish(task, prepared, logits)
