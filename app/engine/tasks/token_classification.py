"""Token classification (tagging, NER): {"tokens", "tags"} or {"text"} -> tags and entity spans.

For prediction ``{"text": str}`` is accepted too: it is split into words (whitespace +
punctuation) keeping character offsets. When both ``tokens`` and ``text`` are given the tokens are
located in the text to get their offsets. Each word's tag is predicted at its first word piece.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine import metrics as M
from app.engine.data import DataError, Example
from app.engine.heads import TokenClassificationHead
from app.engine.tasks.base import HeadLayout, TaskType
from app.engine.tasks.common import chunks, require_labels, require_str, token_type_ids
from app.engine.tasks.spans import spans_with_offsets, split_words

IGNORE_INDEX = -100
"""Label id for word pieces that carry no label (continuation pieces, special tokens, padding)."""


@dataclass
class TokenExample(Example):
    tokens: list[str]
    tags: list[str] | None = None
    offsets: list[tuple[int, int]] | None = None
    text: str | None = None


def _locate_tokens(tokens: Sequence[str], text: str) -> list[tuple[int, int]] | None:
    """Find each token in ``text`` in order; ``None`` when one cannot be found."""
    offsets: list[tuple[int, int]] = []
    pos = 0
    for token in tokens:
        start = text.find(token, pos)
        if start < 0 or text[pos:start].strip():
            return None
        pos = start + len(token)
        offsets.append((start, pos))
    return offsets


def _parse_str_list(value: Any, field: str, line: int) -> list[str]:
    if not isinstance(value, list):
        raise DataError(f"must be a list of strings, got {type(value).__name__}", line=line, field=field)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"item {i} must be a string, got {type(item).__name__}", line=line, field=field)
        if not item.strip():
            raise DataError(f"item {i} is empty or whitespace", line=line, field=field)
    return list(value)


def parse_token_record(record: dict, line: int, require_labels: bool) -> TokenExample:
    text: str | None = None
    offsets: list[tuple[int, int]] | None = None
    if record.get("tokens") is not None:
        tokens = _parse_str_list(record["tokens"], "tokens", line)
        if not tokens:
            raise DataError("empty", line=line, field="tokens")
        if record.get("text") is not None:
            text = require_str(record, "text", line)
            offsets = _locate_tokens(tokens, text)
            if offsets is None:
                raise DataError("tokens do not match field 'text'", line=line, field="tokens")
    elif record.get("text") is not None and not require_labels:
        text = require_str(record, "text", line)
        tokens, offsets = split_words(text)
    else:
        raise DataError("missing", line=line, field="tokens")

    raw_tags = record.get("tags")
    tags: list[str] | None = None
    if raw_tags is None:
        if require_labels:
            raise DataError("missing", line=line, field="tags")
    else:
        tags = _parse_str_list(raw_tags, "tags", line)
        if len(tags) != len(tokens):
            raise DataError(
                f"has {len(tags)} tags but there are {len(tokens)} tokens", line=line, field="tags"
            )
    return TokenExample(tokens=tokens, tags=tags, offsets=offsets, text=text)


def _tag_ids(ex: TokenExample, label2id: dict[str, int] | None, line: int) -> list[int] | None:
    if ex.tags is None or label2id is None:
        return None
    ids = []
    for tag in ex.tags:
        if tag not in label2id:
            raise DataError(
                f"unknown tag {tag!r} (known: {', '.join(sorted(label2id))})", line=line, field="tags"
            )
        ids.append(label2id[tag])
    return ids


def _encode_words(tokenizer: Any, batch: list[list[str]], max_length: int) -> Any:
    return tokenizer(batch, is_split_into_words=True, truncation=True, max_length=max_length)


def _token_feature(
    input_ids: list[int],
    token_type_ids: list[int],
    word_ids: list[int | None],
    tag_ids: list[int] | None,
    n_words: int,
) -> dict:
    labels = []
    prev: int | None = None
    for w in word_ids:
        if w is None or w == prev or tag_ids is None:
            labels.append(IGNORE_INDEX)
        else:
            labels.append(tag_ids[w])
        prev = w
    kept = [w for w in word_ids if w is not None]
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "labels": labels,
        "word_ids": word_ids,
        "n_words_kept": (max(kept) + 1) if kept else 0,
        "n_words": n_words,
    }


def encode_tokens(
    tokenizer: Any,
    examples: Sequence[TokenExample],
    label2id: dict[str, int] | None,
    max_length: int,
) -> list[dict]:
    """Features for token classification (words encoded with ``is_split_into_words=True``).

    Keys: ``input_ids``, ``token_type_ids``, ``labels`` (the word's tag id on the FIRST word piece of
    each word, -100 on the other pieces, on special tokens, and everywhere when there are no tags or no
    ``label2id``), ``word_ids`` (word index per piece, ``None`` for specials), ``n_words_kept`` (words
    whose first piece survived truncation) and ``n_words``.  A word the tokenizer maps to no piece at all
    (e.g. only control characters) is replaced by the unknown token so that every word is labelled.
    Unknown tags raise :class:`DataError` with ``line = index + 1``, field ``tags``.
    """
    tag_ids = [_tag_ids(ex, label2id, i + 1) for i, ex in enumerate(examples)]
    features: list[dict] = []
    for chunk in chunks(len(examples)):
        batch = [list(examples[i].tokens) for i in chunk]
        enc = _encode_words(tokenizer, batch, max_length)
        for k, i in enumerate(chunk):
            words = batch[k]
            word_ids = enc.word_ids(k)
            input_ids = list(enc["input_ids"][k])
            token_types = token_type_ids(enc, k, len(input_ids))
            present = {w for w in word_ids if w is not None}
            n_kept = (max(present) + 1) if present else 0
            missing = [w for w in range(n_kept) if w not in present]
            if missing and tokenizer.unk_token is not None:
                words = [tokenizer.unk_token if w in missing else word for w, word in enumerate(words)]
                single = _encode_words(tokenizer, [words], max_length)
                word_ids = single.word_ids(0)
                input_ids = list(single["input_ids"][0])
                token_types = token_type_ids(single, 0, len(input_ids))
            features.append(_token_feature(input_ids, token_types, list(word_ids), tag_ids[i], len(words)))
    return features


def word_tags(spec: Any, feature: dict, row: Tensor) -> list[str]:
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


def word_scores(feature: dict, row: Tensor) -> list[float | None]:
    """The probability of each word's tag (at its first word piece); None for words cut by truncation."""
    probs = torch.softmax(row.float(), dim=-1).max(dim=-1).values.tolist()
    scores: list[float | None] = []
    prev = None
    for pos, w in enumerate(feature["word_ids"]):
        if w is not None and w != prev:
            scores.append(probs[pos])
        prev = w
    return scores + [None] * (feature["n_words"] - len(scores))


def _response(spec: Any, ex: TokenExample, feature: dict, row: Tensor) -> dict:
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
        "entities": spans_with_offsets(tags, offsets, text),
        "truncated": feature["n_words_kept"] < feature["n_words"],
        "scores": word_scores(feature, row),
        "offsets": [[a, b] for a, b in offsets],
    }


class TokenClassification(TaskType):
    name = "token-classification"
    input_fields = (("text",), ())
    search_metrics = ("token_accuracy", "f1")
    example_type = TokenExample
    label_field = "tags"

    def parse(self, record: dict, *, line: int, require_labels: bool) -> TokenExample:
        return parse_token_record(record, line, require_labels)

    def labels_of(self, example: TokenExample) -> Iterable[str]:
        return example.tags or ()

    def to_input(self, example: TokenExample) -> dict:
        if example.text is not None and example.tokens is None:
            return {"text": example.text}
        return {"tokens": example.tokens}

    def check_spec(self, spec: Any) -> None:
        require_labels(spec)

    def encode(self, spec, tokenizer, examples, label2id, max_length) -> list[dict]:
        return encode_tokens(tokenizer, examples, label2id, max_length)

    def input_length(self, spec, tokenizer, example) -> tuple[int, str]:
        n = len(tokenizer(example.tokens, is_split_into_words=True)["input_ids"])
        return n, "tokens" if example.text is None else "text"

    def targets(self, features: Sequence[dict], length: int) -> dict[str, Tensor]:
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
        return {"labels": labels}

    def build_head(self, spec, backbone) -> nn.Module:
        return TokenClassificationHead(backbone.hidden_size, len(spec.labels), dropout=spec.head_dropout)

    def head_layout(self, spec, backbone) -> HeadLayout:
        return HeadLayout(
            "classifier.weight", "classifier.bias", len(spec.labels), backbone.hidden_size, None
        )

    def loss(self, spec, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=IGNORE_INDEX
        )

    def decode(self, spec, examples, features, logits) -> list[dict]:
        return [_response(spec, ex, f, row) for ex, f, row in zip(examples, features, logits, strict=True)]

    def metrics(self, predictions, references) -> dict[str, float]:
        return {
            **M.entity_f1(predictions, references),
            "token_accuracy": M.token_accuracy(predictions, references),
        }

    def evaluate(self, spec, examples, features, logits) -> dict:
        pred_seqs = [word_tags(spec, f, r) for f, r in zip(features, logits, strict=True)]
        return {**self.metrics(pred_seqs, [list(ex.tags) for ex in examples]), "n": len(examples)}

    def primary_metric(self, spec) -> str:
        if any(lab.startswith(("B-", "I-", "E-", "S-")) for lab in spec.labels):
            return "f1"
        return "token_accuracy"
