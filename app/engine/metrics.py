"""Evaluation metrics of the task types; every function returns plain Python floats.

* classification: :func:`accuracy` and :func:`macro_f1`, values in ``[0, 1]``;
* token classification: :func:`entity_f1` (seqeval's default entity-level micro scores, in ``[0, 1]``)
  and :func:`token_accuracy` (in ``[0, 1]``);
* question answering: :func:`squad_em_f1`, exact match and F1 in **percent** (``0..100``) like the
  official SQuAD evaluation script;
* regression: :func:`pearson` and :func:`spearman` correlations (in ``[-1, 1]``) and :func:`mse`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from app.engine.tasks.spans import decode_bio

__all__ = [
    "accuracy",
    "compute_metrics",
    "entity_f1",
    "macro_f1",
    "mse",
    "normalize_answer",
    "pearson",
    "spearman",
    "squad_em_f1",
    "token_accuracy",
]


def _check_lengths(preds: Sequence[Any], golds: Sequence[Any]) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} references")


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def accuracy(preds: Sequence[Hashable], golds: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to the reference, in ``[0, 1]`` (0.0 for no examples)."""
    _check_lengths(preds, golds)
    if not golds:
        return 0.0
    return float(sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds))


def macro_f1(
    preds: Sequence[Hashable], golds: Sequence[Hashable], labels: Iterable[Hashable] | None = None
) -> float:
    """Unweighted mean of per-label F1, in ``[0, 1]``.

    The labels averaged over are ``labels`` when given, else every label seen in ``golds`` or ``preds``
    (like scikit-learn's ``f1_score(average="macro")``).  A label with no true positives scores 0.
    """
    _check_lengths(preds, golds)
    label_set = list(labels) if labels is not None else sorted(set(golds) | set(preds), key=str)
    if not label_set:
        return 0.0
    total = 0.0
    for label in label_set:
        tp = sum(p == label and g == label for p, g in zip(preds, golds, strict=True))
        n_pred = sum(p == label for p in preds)
        n_gold = sum(g == label for g in golds)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        total += _f1(precision, recall)
    return float(total / len(label_set))


def entity_f1(
    pred_tag_seqs: Sequence[Sequence[str]], gold_tag_seqs: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Entity-level micro ``{"precision", "recall", "f1"}`` in ``[0, 1]``.

    Matches seqeval's default mode (conlleval-style, non-strict chunking via
    :func:`app.engine.tasks.spans.decode_bio`): an entity counts as correct when its type and its first and
    last word agree exactly.  Scores with a zero denominator are 0.0.
    """
    _check_lengths(pred_tag_seqs, gold_tag_seqs)
    n_correct = n_pred = n_gold = 0
    for i, (pred, gold) in enumerate(zip(pred_tag_seqs, gold_tag_seqs, strict=True)):
        if len(pred) != len(gold):
            raise ValueError(f"sequence {i}: {len(pred)} predicted tags but {len(gold)} gold tags")
        pred_entities = set(decode_bio(pred))
        gold_entities = set(decode_bio(gold))
        n_correct += len(pred_entities & gold_entities)
        n_pred += len(pred_entities)
        n_gold += len(gold_entities)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(_f1(precision, recall))}


def token_accuracy(pred_seqs: Sequence[Sequence[Any]], gold_seqs: Sequence[Sequence[Any]]) -> float:
    """Fraction of positions whose prediction equals the gold tag, in ``[0, 1]``.

    Positions whose gold value is ``None`` are ignored; 0.0 when nothing is left to score.
    """
    _check_lengths(pred_seqs, gold_seqs)
    correct = total = 0
    for i, (pred, gold) in enumerate(zip(pred_seqs, gold_seqs, strict=True)):
        if len(pred) != len(gold):
            raise ValueError(f"sequence {i}: {len(pred)} predictions but {len(gold)} gold values")
        for p, g in zip(pred, gold, strict=True):
            if g is None:
                continue
            total += 1
            correct += p == g
    return float(correct / total) if total else 0.0


# --------------------------------------------------------------------------------------------------
# SQuAD
# --------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lowercase, drop ASCII punctuation, drop the articles
    a/an/the, and collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def _token_f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    if not pred_tokens or not truth_tokens:
        # SQuAD 2.0 rule for no-answer; for non-empty answers this equals the v1.1 formula.
        return float(pred_tokens == truth_tokens)
    common = Counter(pred_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(truth_tokens)
    return _f1(precision, recall)


def squad_em_f1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in **percent** (0..100), as the official SQuAD v1.1 script.

    Each question scores its maximum over the reference answers.  Every reference id counts; a
    question without a prediction scores 0 (like the official script), extra predictions are ignored.
    An empty reference list means "no answer" (SQuAD 2.0): only the empty prediction scores there.
    """
    if not references:
        return {"exact_match": 0.0, "f1": 0.0}
    em_total = f1_total = 0.0
    for qid, truths in references.items():
        if qid not in predictions:
            continue
        golds = list(truths) or [""]
        prediction = predictions[qid]
        em_total += max(_exact(prediction, t) for t in golds)
        f1_total += max(_token_f1(prediction, t) for t in golds)
    n = len(references)
    return {"exact_match": float(100.0 * em_total / n), "f1": float(100.0 * f1_total / n)}


# --------------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------------


def _floats(preds: Sequence[float], golds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    _check_lengths(preds, golds)
    return np.asarray(preds, dtype=np.float64), np.asarray(golds, dtype=np.float64)


def pearson(preds: Sequence[float], golds: Sequence[float]) -> float:
    """Pearson correlation in ``[-1, 1]``; 0.0 when it is undefined (fewer than two values, or a
    constant side), so that a best-epoch comparison never meets NaN."""
    x, y = _floats(preds, golds)
    if len(x) < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(preds: Sequence[float], golds: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson's of the (tie-averaged) ranks; 0.0 when undefined."""
    x, y = _floats(preds, golds)
    return pearson(_ranks(x).tolist(), _ranks(y).tolist())


def mse(preds: Sequence[float], golds: Sequence[float]) -> float:
    """Mean squared error (0.0 for no examples)."""
    x, y = _floats(preds, golds)
    return float(((x - y) ** 2).mean()) if len(x) else 0.0


def compute_metrics(task_type: str, predictions: Any, references: Any) -> dict[str, float]:
    """The metrics of a task type (see each type's ``metrics``); ValueError for an unknown type."""
    from app.engine import tasks

    return tasks.get(task_type).metrics(predictions, references)
