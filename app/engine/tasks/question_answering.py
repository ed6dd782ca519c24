"""Extractive question answering: {"question", "context", "answers"?} -> {"answer", "start", "end", "score"}.

Records: ``{"id"?: str, "question": str, "context": str, "answers": {"text": [...],
"answer_start": [...]}}`` (answers optional for prediction; empty lists mean "no answer", SQuAD 2.0
style), or SQuAD's own JSON file format. Every answer must agree with the context:
``context[start:start + len(text)] == text``. Long contexts are split into overlapping windows
(never refused); the best span over all windows is the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine import metrics as M
from app.engine.data import DataError, Example
from app.engine.heads import QuestionAnsweringHead
from app.engine.tasks.base import HeadLayout, OutputTensor, TaskType
from app.engine.tasks.common import chunks, require_str, token_type_ids


@dataclass
class QAExample(Example):
    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]


def _check_answers(context: str, texts: list[str], starts: list[int], line: int) -> None:
    for i, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if not text:
            raise DataError(f"answer {i} is empty", line=line, field="answers")
        if start < 0 or context[start : start + len(text)] != text:
            found = context[max(start, 0) : max(start, 0) + len(text)]
            raise DataError(
                f"answer {i} {text!r} does not match the context at answer_start={start} "
                f"(context has {found!r} there)",
                line=line,
                field="answers",
            )


def _parse_answers(value: Any, line: int) -> tuple[list[str], list[int]]:
    if not isinstance(value, dict):
        raise DataError(
            'must be an object {"text": [...], "answer_start": [...]}', line=line, field="answers"
        )
    texts = value.get("text")
    starts = value.get("answer_start")
    if texts is None or starts is None:
        raise DataError('needs both "text" and "answer_start" lists', line=line, field="answers")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError('"text" must be a list of strings', line=line, field="answers")
    if not isinstance(starts, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in starts
    ):
        raise DataError('"answer_start" must be a list of integers', line=line, field="answers")
    if len(texts) != len(starts):
        raise DataError(
            f'"text" has {len(texts)} items but "answer_start" has {len(starts)}', line=line, field="answers"
        )
    return list(texts), list(starts)


def parse_qa_record(record: dict, line: int, require_labels: bool) -> QAExample:
    raw_id = record.get("id")
    if raw_id is None:
        qid = str(line)
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        qid = str(raw_id)
    else:
        raise DataError(f"must be a string, got {type(raw_id).__name__}", line=line, field="id")
    question = require_str(record, "question", line)
    context = require_str(record, "context", line)
    raw_answers = record.get("answers")
    if raw_answers is None:
        if require_labels:
            raise DataError("missing", line=line, field="answers")
        texts, starts = [], []
    else:
        texts, starts = _parse_answers(raw_answers, line)
    _check_answers(context, texts, starts, line)
    return QAExample(id=qid, question=question, context=context, answers=texts, answer_starts=starts)


def _max_question_tokens(max_length: int, doc_stride: int) -> int:
    hard = max_length - 3 - doc_stride - 1
    if doc_stride < 0 or hard < 1:
        raise ValueError(
            f"doc_stride={doc_stride} leaves no room for the context with max_length={max_length}"
        )
    return max(1, min(hard, (max_length - 3) // 2))


def _fit_question(tokenizer: Any, question: str, limit: int) -> str:
    """Cut a question that is too long to leave room for the context (HF would raise)."""
    cut = limit
    while True:
        offsets = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= limit:
            return question
        if cut < 1:
            return question[: offsets[0][1]]
        question = question[: offsets[min(cut, len(offsets)) - 1][1]]
        cut -= 1


def _answer_positions(ex: QAExample, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    """Token indices of the first gold answer inside this window, or (0, 0)."""
    if not ex.answers:
        return 0, 0
    start_char = ex.answer_starts[0]
    end_char = start_char + len(ex.answers[0])
    ctx = [i for i, off in enumerate(offsets) if off is not None]
    if not ctx:
        return 0, 0
    first, last = ctx[0], ctx[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:  # type: ignore[index]
        return 0, 0
    start_tok = next(i for i in ctx if offsets[i][1] > start_char)  # type: ignore[index]
    end_tok = next(i for i in reversed(ctx) if offsets[i][0] < end_char)  # type: ignore[index]
    if end_tok < start_tok:
        return 0, 0
    return start_tok, end_tok


def encode_qa(
    tokenizer: Any,
    examples: Sequence[QAExample],
    max_length: int,
    doc_stride: int,
) -> list[dict]:
    """HF-style overlapping windows over the context (``stride=doc_stride`` overlapping tokens).

    Keys: ``input_ids``, ``token_type_ids``, ``example_index``, ``offsets`` (``(start, end)`` char
    offsets in the context for context tokens, ``None`` for question and special tokens),
    ``start_position`` / ``end_position`` (token indices of the first gold answer in this window; 0, 0 =
    CLS when it is not fully inside the window or there is none).  Questions too long to leave room
    for context are cut to ``min(max_length - doc_stride - 4, (max_length - 3) // 2)`` tokens.
    """
    q_limit = _max_question_tokens(max_length, doc_stride)
    features: list[dict] = []
    for chunk in chunks(len(examples)):
        questions = [examples[i].question for i in chunk]
        lengths = tokenizer(questions, add_special_tokens=False)["input_ids"]
        questions = [
            _fit_question(tokenizer, q, q_limit) if len(ids) > q_limit else q
            for q, ids in zip(questions, lengths, strict=True)
        ]
        contexts = [examples[i].context for i in chunk]
        enc = tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        sample_map = enc["overflow_to_sample_mapping"]
        for f in range(len(enc["input_ids"])):
            example_index = chunk[sample_map[f]]
            seq_ids = enc.sequence_ids(f)
            offsets: list[tuple[int, int] | None] = [
                (int(off[0]), int(off[1])) if seq_ids[t] == 1 else None
                for t, off in enumerate(enc["offset_mapping"][f])
            ]
            start, end = _answer_positions(examples[example_index], offsets)
            input_ids = list(enc["input_ids"][f])
            features.append(
                {
                    "input_ids": input_ids,
                    "token_type_ids": token_type_ids(enc, f, len(input_ids)),
                    "example_index": example_index,
                    "offsets": offsets,
                    "start_position": start,
                    "end_position": end,
                }
            )
    return features


@dataclass
class _Candidate:
    score: float
    start: int
    end: int


def _softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _window_candidates(
    offsets: Sequence[tuple[int, int] | None],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int,
    max_answer_length: int,
) -> list[_Candidate]:
    n = len(offsets)
    starts = start_logits[:n]
    ends = end_logits[:n]
    start_idx = np.argsort(starts)[::-1][:n_best]
    end_idx = np.argsort(ends)[::-1][:n_best]
    out: list[_Candidate] = []
    for s in start_idx:
        if offsets[s] is None:
            continue
        for e in end_idx:
            if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            out.append(
                _Candidate(float(starts[s] + ends[e]), offsets[s][0], offsets[e][1])  # type: ignore[index]
            )
    return out


def _dedupe(candidates: list[_Candidate]) -> list[_Candidate]:
    """Best-first candidates, one per character span (overlapping windows repeat spans)."""
    best: dict[tuple[int, int], _Candidate] = {}
    for cand in candidates:
        key = (cand.start, cand.end)
        if key not in best or cand.score > best[key].score:
            best[key] = cand
    return sorted(best.values(), key=lambda c: c.score, reverse=True)


def postprocess_qa(
    examples: Sequence[QAExample],
    features: Sequence[dict],
    start_logits: Sequence[Sequence[float]] | np.ndarray,
    end_logits: Sequence[Sequence[float]] | np.ndarray,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    allow_no_answer: bool = False,
    null_threshold: float = 0.0,
) -> list[dict]:
    """Pick the best answer span for each example over all of its windows.

    A span's score is ``start_logit + end_logit``; spans must lie on context tokens, have
    ``end >= start`` and at most ``max_answer_length`` tokens.  The top ``n_best`` start and end
    indices of each window are combined (as in the HF / original BERT SQuAD code); a character span
    found in several overlapping windows counts once, with its best score.

    Returns, per example, ``{"id", "text", "start", "end", "score"}`` where ``start``/``end`` are
    character offsets in the context (end exclusive) and ``score`` is the softmax probability of the
    chosen answer among the ``n_best`` best candidates (plus the null answer when allowed).

    With ``allow_no_answer`` the null score is ``start[0] + end[0]`` (CLS) of the window most confident
    that an answer exists (the lowest null score, as in the BERT/HF SQuAD 2.0 code); the empty answer is
    returned (``text=""``, ``start=end=-1``) when ``null_score - best_span_score > null_threshold``
    or when no valid span exists at all.
    """
    by_example: dict[int, list[int]] = {}
    for f, feature in enumerate(features):
        by_example.setdefault(int(feature["example_index"]), []).append(f)

    results = []
    for e, ex in enumerate(examples):
        candidates: list[_Candidate] = []
        null_score: float | None = None
        for f in by_example.get(e, []):
            starts = np.asarray(start_logits[f], dtype=np.float64)
            ends = np.asarray(end_logits[f], dtype=np.float64)
            window_null = float(starts[0] + ends[0])
            if null_score is None or window_null < null_score:
                null_score = window_null
            candidates.extend(
                _window_candidates(features[f]["offsets"], starts, ends, n_best, max_answer_length)
            )
        candidates = _dedupe(candidates)[:n_best]
        results.append(_choose_answer(ex, candidates, null_score, allow_no_answer, null_threshold))
    return results


def _choose_answer(
    ex: QAExample,
    candidates: list[_Candidate],
    null_score: float | None,
    allow_no_answer: bool,
    null_threshold: float,
) -> dict:
    empty = {"id": ex.id, "text": "", "start": -1, "end": -1, "score": 0.0}
    scores = [c.score for c in candidates]
    use_null = allow_no_answer and null_score is not None
    if use_null:
        scores.append(null_score)  # type: ignore[arg-type]
    if not scores:
        return empty
    probs = _softmax(scores)
    if use_null and (not candidates or null_score - candidates[0].score > null_threshold):  # type: ignore[operator]
        return {**empty, "score": probs[-1]}
    if not candidates:
        return empty
    best = candidates[0]
    return {
        "id": ex.id,
        "text": ex.context[best.start : best.end],
        "start": best.start,
        "end": best.end,
        "score": probs[0],
    }


class QuestionAnswering(TaskType):
    name = "question-answering"
    example_type = QAExample
    squad_json = True
    always_pairs = True
    input_fields = (("question", "context"), ())
    search_metrics = ("f1", "exact_match")
    output_tensors = (
        OutputTensor("answer", "BYTES"),
        OutputTensor("score", "FP32"),
        OutputTensor("start", "INT64"),
        OutputTensor("end", "INT64"),
    )

    def parse(self, record: dict, *, line: int, require_labels: bool) -> QAExample:
        return parse_qa_record(record, line, require_labels)

    def to_input(self, example: QAExample) -> dict:
        return {"id": example.id, "question": example.question, "context": example.context}

    def check_spec(self, spec: Any) -> None:
        from app.engine.model import SpecError

        if not 0 < spec.doc_stride < spec.max_length:
            raise SpecError("doc_stride must be between 1 and max_length - 1", field="doc_stride")

    def encode(self, spec, tokenizer, examples, label2id, max_length) -> list[dict]:
        return encode_qa(tokenizer, examples, max_length, min(spec.doc_stride, max_length // 2))

    def targets(self, features: Sequence[dict], length: int) -> dict[str, Tensor]:
        return {
            "start_position": torch.tensor([f["start_position"] for f in features], dtype=torch.long),
            "end_position": torch.tensor([f["end_position"] for f in features], dtype=torch.long),
        }

    def build_head(self, spec, backbone) -> nn.Module:
        return QuestionAnsweringHead(backbone.hidden_size)

    def head_layout(self, spec, backbone) -> HeadLayout:
        return HeadLayout("qa_outputs.weight", "qa_outputs.bias", 2, backbone.hidden_size, None)

    def loss(self, spec, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        pad = batch["attention_mask"] == 0
        start = logits[..., 0].masked_fill(pad, -1e4)
        end = logits[..., 1].masked_fill(pad, -1e4)
        return (
            F.cross_entropy(start, batch["start_position"]) + F.cross_entropy(end, batch["end_position"])
        ) / 2

    def decode(self, spec, examples, features, logits) -> list[dict]:
        preds = postprocess_qa(
            examples,
            features,
            [row[:, 0].float().cpu().numpy() for row in logits],
            [row[:, 1].float().cpu().numpy() for row in logits],
            max_answer_length=spec.max_answer_length,
            allow_no_answer=spec.allow_no_answer,
        )
        return [
            {"id": p["id"], "answer": p["text"], "start": p["start"], "end": p["end"], "score": p["score"]}
            for p in preds
        ]

    def metrics(self, predictions, references) -> dict[str, float]:
        return M.squad_em_f1(predictions, references)

    def evaluate(self, spec, examples, features, logits) -> dict:
        preds = self.decode(spec, list(examples), features, logits)
        predictions = {p["id"]: p["answer"] for p in preds}
        references = {ex.id: list(ex.answers) or [""] for ex in examples}
        return {**self.metrics(predictions, references), "n": len(references)}

    def primary_metric(self, spec) -> str:
        return "f1"
