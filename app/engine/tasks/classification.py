"""Text (pair) classification: {"text", "text_pair"?, "label"} -> {"label", "score", "scores"}."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine import metrics as M
from app.engine.data import DataError, Example
from app.engine.heads import (
    VERBALIZER_MASK_POSITION,
    ClassificationHead,
    VerbalizerHead,
    label_word_embeddings,
)
from app.engine.tasks.base import HeadLayout, OutputTensor, TaskType
from app.engine.tasks.common import (
    clip_text_pair,
    encode_text_pairs,
    parse_text_pair,
    require_labels,
    text_pair_length,
)


@dataclass
class ClassificationExample(Example):
    text: str
    text_pair: str | None = None
    label: str | None = None


def _parse_label(value: Any, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(
            f"must be a string or an integer, got {type(value).__name__}", line=line, field="label"
        )
    label = str(value)
    if not label.strip():
        raise DataError("empty", line=line, field="label")
    return label


def encode_classification(
    tokenizer: Any,
    examples: Sequence[ClassificationExample],
    label2id: dict[str, int] | None,
    max_length: int,
) -> list[dict]:
    """Features ``{"input_ids", "token_type_ids", "label"}``; label is -1 when unknown/absent.

    Pairs are encoded as ``tokenizer(text, text_pair, truncation="longest_first")``.  An example whose
    label is not in ``label2id`` raises :class:`DataError` with ``line = index + 1``, field ``label``.
    """
    labels: list[int] = []
    for i, ex in enumerate(examples):
        if ex.label is None or label2id is None:
            labels.append(-1)
        elif ex.label not in label2id:
            raise DataError(
                f"unknown label {ex.label!r} (known: {', '.join(sorted(label2id))})",
                line=i + 1,
                field="label",
            )
        else:
            labels.append(label2id[ex.label])
    features = encode_text_pairs(tokenizer, examples, max_length)
    for f, label in zip(features, labels, strict=True):
        f["label"] = label
    return features


class Classification(TaskType):
    name = "classification"
    example_type = ClassificationExample
    heads = ("linear", "verbalizer")
    label_field = "label"
    input_fields = (("text",), ("text_pair",))
    search_metrics = ("accuracy", "macro_f1")
    output_tensors = (
        OutputTensor("label", "BYTES"),
        OutputTensor("score", "FP32"),
        OutputTensor("scores", "FP32", per_label=True),
    )

    def parse(self, record: dict, *, line: int, require_labels: bool) -> ClassificationExample:
        text, text_pair = parse_text_pair(record, line)
        raw_label = record.get("label")
        if raw_label is None:
            if require_labels:
                raise DataError("missing", line=line, field="label")
            label = None
        else:
            label = _parse_label(raw_label, line)
        return ClassificationExample(text=text, text_pair=text_pair, label=label)

    def csv_columns(self, require_labels: bool) -> tuple[str, ...]:
        return ("text", "label") if require_labels else ("text",)

    def labels_of(self, example: ClassificationExample) -> Iterable[str]:
        return () if example.label is None else (example.label,)

    def to_input(self, example: ClassificationExample) -> dict:
        return {"text": example.text, "text_pair": example.text_pair}

    def check_spec(self, spec: Any) -> None:
        require_labels(spec)

    def encode(self, spec, tokenizer, examples, label2id, max_length) -> list[dict]:
        if spec.head != "verbalizer":
            return encode_classification(tokenizer, examples, label2id, max_length)
        feats = encode_classification(tokenizer, examples, label2id, max_length - 1)
        mask_id = tokenizer.mask_token_id
        for f in feats:  # "[CLS] [MASK] text [SEP]": the head reads position 1
            f["input_ids"].insert(VERBALIZER_MASK_POSITION, mask_id)
            f["token_type_ids"].insert(VERBALIZER_MASK_POSITION, 0)
        return feats

    def clip(self, spec, tokenizer, example, max_tokens: int):
        return clip_text_pair(tokenizer, example, max_tokens)

    def input_length(self, spec, tokenizer, example) -> tuple[int, str]:
        return text_pair_length(tokenizer, example) + (spec.head == "verbalizer"), "text"

    def targets(self, features: Sequence[dict], length: int) -> dict[str, Tensor]:
        return {"label": torch.tensor([f["label"] for f in features], dtype=torch.long)}

    def build_head(self, spec, backbone) -> nn.Module:
        if spec.head == "verbalizer":
            words = spec.label_words or [lab.replace("_", " ") for lab in spec.labels]
            return VerbalizerHead(label_word_embeddings(backbone, words), dropout=spec.head_dropout)
        return ClassificationHead(backbone.hidden_size, len(spec.labels), dropout=spec.head_dropout)

    def head_layout(self, spec, backbone) -> HeadLayout:
        n, h = len(spec.labels), backbone.hidden_size
        if spec.head == "verbalizer":
            return HeadLayout("label_matrix", "bias", n, h, VERBALIZER_MASK_POSITION)
        return HeadLayout("classifier.weight", "classifier.bias", n, h, 0)

    def loss(self, spec, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(logits, batch["label"])

    def decode(self, spec, examples, features, logits) -> list[dict]:
        out = []
        for row in logits:
            probs = torch.softmax(row.float(), dim=-1).tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            out.append(
                {
                    "label": spec.labels[best],
                    "score": probs[best],
                    "scores": {lab: p for lab, p in zip(spec.labels, probs, strict=True)},
                }
            )
        return out

    def metrics(self, predictions, references) -> dict[str, float]:
        return {
            "accuracy": M.accuracy(predictions, references),
            "macro_f1": M.macro_f1(predictions, references),
        }

    def evaluate(self, spec, examples, features, logits) -> dict:
        preds = [spec.labels[int(r.argmax())] for r in logits]
        return {**self.metrics(preds, [ex.label for ex in examples]), "n": len(examples)}

    def primary_metric(self, spec) -> str:
        return "accuracy"
