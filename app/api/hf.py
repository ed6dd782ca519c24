"""The Hugging Face inference shape on POST /predict/{task}.

Requests: `{"inputs": "text"}`, `{"inputs": ["a", "b"]}`, `{"inputs": {"text": .., "text_pair": ..}}`,
`{"inputs": {"question": .., "context": ..}}`, each with optional `parameters` (top_k, truncation,
aggregation_strategy). A single string or object, or any request with `parameters`, is answered in
the shape of transformers' pipelines (a list without `parameters` keeps the native answer):

- classification: one input -> `[{"label", "score"}]` (top_k items, best first; 1 when top_k is not
  sent); a list -> one `{"label", "score"}` per input, or one list per input when top_k is sent;
- regression: like classification with the one label `LABEL_0` and the raw score (the pipeline's
  output for a one-output model with function_to_apply="none");
- token-classification: one input -> a list of entities, a list -> one list per input; entities are
  `{"entity_group", "score", "word", "start", "end"}` (aggregation simple/first; score: the mean of
  the words' tag probabilities) or, with aggregation_strategy=none, one `{"entity", "score",
  "index", "word", "start", "end"}` per word not tagged O (index: the word's 1-based position);
- question-answering: one input -> `{"answer", "score", "start", "end"}`, a list -> a list of them.
"""

from __future__ import annotations

from typing import Any

from app.api.errors import InputError
from app.api.schemas import PredictParameters, PredictRequest
from app.engine.tasks.spans import decode_bio

AGGREGATIONS = ("none", "simple", "first")


def wants_hf(body: PredictRequest) -> bool:
    return not isinstance(body.inputs, list) or "parameters" in body.model_fields_set


def records(body: PredictRequest) -> list[str | dict[str, Any]]:
    """The inputs as the native list."""
    return list(body.inputs) if isinstance(body.inputs, list) else [body.inputs]


def overflow(params: PredictParameters | None) -> str | None:
    if params is None or params.truncation is None:
        return None
    return "truncate" if params.truncation else "refuse"


def check(params: PredictParameters | None) -> None:
    if params is not None and params.aggregation_strategy not in AGGREGATIONS:
        raise InputError.at(
            ["body", "parameters", "aggregation_strategy"],
            f"{params.aggregation_strategy!r} needs per-word-piece scores, which this server does not "
            f"keep (each word's tag is read at its first piece); use one of {', '.join(AGGREGATIONS)}",
            "value_error",
        )


def response(body: PredictRequest, predictions: list[dict]) -> Any:
    params = body.parameters or PredictParameters()
    top_k_sent = "top_k" in params.model_fields_set
    single = not isinstance(body.inputs, list)
    out = [_one(p, params, top_k_sent, single) for p in predictions]
    return out[0] if single else out


def _one(p: dict, params: PredictParameters, top_k_sent: bool, single: bool) -> Any:
    if "tags" in p:
        return _entities(p, params.aggregation_strategy)
    if "answer" in p:
        return {"answer": p["answer"], "score": p["score"], "start": p["start"], "end": p["end"]}
    if "label" in p:
        ranked = sorted(p["scores"].items(), key=lambda kv: -kv[1])
        k = len(ranked) if params.top_k is None and top_k_sent else (params.top_k or 1)
        items = [{"label": label, "score": score} for label, score in ranked[:k]]
    else:
        items = [{"label": "LABEL_0", "score": p["score"]}]
    return items if single or top_k_sent else items[0]


def _entities(p: dict, aggregation: str) -> list[dict]:
    tags, tokens = p["tags"], p["tokens"]
    scores, offsets = p.get("scores") or [None] * len(tags), p.get("offsets") or []
    if aggregation == "none":
        return [
            {
                "entity": tag,
                "score": scores[i],
                "index": i + 1,
                "word": tokens[i],
                "start": offsets[i][0] if offsets else None,
                "end": offsets[i][1] if offsets else None,
            }
            for i, tag in enumerate(tags)
            if tag != "O"
        ]
    out = []
    for (type_, first, last), entity in zip(decode_bio(tags), p["entities"], strict=True):
        known = [s for s in scores[first : last + 1] if s is not None]
        out.append(
            {
                "entity_group": type_,
                "score": sum(known) / len(known) if known else None,
                "word": entity["text"],
                "start": entity["start"],
                "end": entity["end"],
            }
        )
    return out
