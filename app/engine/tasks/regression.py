"""Regression on a text (pair), e.g. sentence similarity: {"text", "text_pair"?, "score"} -> {"score"}.

The head is a one-output linear layer on [CLS] (a ClassificationHead with one output, so the
served form is an ordinary FrozenHead); the loss is the mean squared error. No labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine import metrics as M
from app.engine.data import DataError, Example
from app.engine.heads import ClassificationHead
from app.engine.tasks.base import HeadLayout, OutputTensor, TaskType
from app.engine.tasks.common import clip_text_pair, encode_text_pairs, parse_text_pair, text_pair_length


@dataclass
class RegressionExample(Example):
    text: str
    text_pair: str | None = None
    score: float | None = None


def _parse_score(value: Any, line: int) -> float:
    """A finite number; a numeric string is read too (CSV/TSV cells are strings)."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise DataError(f"must be a number, got {value!r}", line=line, field="score") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise DataError(f"must be a number, got {type(value).__name__}", line=line, field="score")
    if not math.isfinite(number):
        raise DataError(f"must be a finite number, got {number}", line=line, field="score")
    return number


class Regression(TaskType):
    name = "regression"
    input_fields = (("text",), ("text_pair",))
    search_metrics = ("pearson", "spearman")
    output_tensors = (OutputTensor("score", "FP32"),)
    example_type = RegressionExample

    def parse(self, record: dict, *, line: int, require_labels: bool) -> RegressionExample:
        text, text_pair = parse_text_pair(record, line)
        raw = record.get("score")
        if raw is None:
            if require_labels:
                raise DataError("missing", line=line, field="score")
            return RegressionExample(text, text_pair)
        return RegressionExample(text, text_pair, _parse_score(raw, line))

    def csv_columns(self, require_labels: bool) -> tuple[str, ...]:
        return ("text", "score") if require_labels else ("text",)

    def to_input(self, example: RegressionExample) -> dict:
        return {"text": example.text, "text_pair": example.text_pair}

    def check_spec(self, spec: Any) -> None:
        from app.engine.model import SpecError

        if spec.labels:
            raise SpecError("labels: a regression task has no labels", field="labels")

    def encode(self, spec, tokenizer, examples, label2id, max_length) -> list[dict]:
        features = encode_text_pairs(tokenizer, examples, max_length)
        for f, ex in zip(features, examples, strict=True):
            f["score"] = ex.score if label2id is not None else None
        return features

    def clip(self, spec, tokenizer, example, max_tokens: int):
        return clip_text_pair(tokenizer, example, max_tokens)

    def input_length(self, spec, tokenizer, example) -> tuple[int, str]:
        return text_pair_length(tokenizer, example), "text"

    def targets(self, features: Sequence[dict], length: int) -> dict[str, Tensor]:
        return {"score": torch.tensor([f["score"] for f in features], dtype=torch.float32)}

    def build_head(self, spec, backbone) -> nn.Module:
        return ClassificationHead(backbone.hidden_size, 1, dropout=spec.head_dropout)

    def head_layout(self, spec, backbone) -> HeadLayout:
        return HeadLayout("classifier.weight", "classifier.bias", 1, backbone.hidden_size, 0)

    def loss(self, spec, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(logits.squeeze(-1).float(), batch["score"])

    def decode(self, spec, examples, features, logits) -> list[dict]:
        return [{"score": float(row.float().reshape(-1)[0])} for row in logits]

    def metrics(self, predictions, references) -> dict[str, float]:
        return {
            "pearson": M.pearson(predictions, references),
            "spearman": M.spearman(predictions, references),
            "mse": M.mse(predictions, references),
        }

    def evaluate(self, spec, examples, features, logits) -> dict:
        preds = [p["score"] for p in self.decode(spec, examples, features, logits)]
        return {**self.metrics(preds, [ex.score for ex in examples]), "n": len(examples)}

    def primary_metric(self, spec) -> str:
        return "pearson"
