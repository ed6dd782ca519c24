"""Pieces several task types share: field checks, chunked tokenisation, text (pair) encoding."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from app.engine.data import DataError

ENCODE_CHUNK = 1000


def require_str(record: dict, field: str, line: int, *, allow_empty: bool = False) -> str:
    if field not in record or record[field] is None:
        raise DataError("missing", line=line, field=field)
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {type(value).__name__}", line=line, field=field)
    if not allow_empty and not value.strip():
        raise DataError("empty", line=line, field=field)
    return value


def parse_text_pair(record: dict, line: int) -> tuple[str, str | None]:
    """``text`` (required) and ``text_pair`` (optional; blank means none) of a record."""
    text = require_str(record, "text", line)
    text_pair = record.get("text_pair")
    if text_pair is not None:
        if not isinstance(text_pair, str):
            raise DataError(
                f"must be a string or null, got {type(text_pair).__name__}", line=line, field="text_pair"
            )
        if not text_pair.strip():
            text_pair = None
    return text, text_pair


def chunks(n: int, size: int = ENCODE_CHUNK) -> Iterable[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def token_type_ids(enc: Any, i: int, length: int) -> list[int]:
    ids = enc.get("token_type_ids") if hasattr(enc, "get") else None
    return list(ids[i]) if ids is not None else [0] * length


def encode_text_pairs(tokenizer: Any, examples: Sequence[Any], max_length: int) -> list[dict]:
    """``{"input_ids", "token_type_ids"}`` of examples with ``text`` / ``text_pair`` attributes, in
    order. Pairs are encoded as ``tokenizer(text, text_pair, truncation="longest_first")``."""
    features: list[dict | None] = [None] * len(examples)
    singles = [i for i, ex in enumerate(examples) if ex.text_pair is None]
    pairs = [i for i, ex in enumerate(examples) if ex.text_pair is not None]
    for group, is_pair in ((singles, False), (pairs, True)):
        for chunk in chunks(len(group)):
            idx = [group[j] for j in chunk]
            texts = [examples[i].text for i in idx]
            if is_pair:
                enc = tokenizer(
                    texts,
                    [examples[i].text_pair for i in idx],
                    truncation="longest_first",
                    max_length=max_length,
                )
            else:
                enc = tokenizer(texts, truncation=True, max_length=max_length)
            for k, i in enumerate(idx):
                input_ids = list(enc["input_ids"][k])
                features[i] = {
                    "input_ids": input_ids,
                    "token_type_ids": token_type_ids(enc, k, len(input_ids)),
                }
    return [f for f in features if f is not None]


#: first guess of characters per token when cutting an overlong text (doubled until enough tokens)
CLIP_CHARS_PER_TOKEN = 8
_CUT_SPACE = " \t\n\r"


def _space_cut(text: str, limit: int) -> int | None:
    """The last index <= limit (and > limit // 2) holding ASCII whitespace, or None."""
    best = max(text.rfind(c, limit // 2, limit + 1) for c in _CUT_SPACE)
    return best if best > 0 else None


def clip_text(tokenizer: Any, text: str, max_tokens: int) -> str:
    """A prefix of `text`, cut at whitespace, holding more than `max_tokens` tokens (so truncating it
    to `max_tokens` gives the same tokens as truncating `text`); `text` itself when it is short or
    no such prefix exists. Every tokeniser the engine supports splits words at whitespace before
    its subword model runs (BERT/WordPiece, byte-level BPE, SentencePiece's metaspace), so the
    tokens of a prefix that ends at whitespace are a prefix of the text's tokens. The work is that
    of tokenising a few times max_tokens * CLIP_CHARS_PER_TOKEN characters, not the whole text."""
    limit = max(64, max_tokens * CLIP_CHARS_PER_TOKEN)
    while len(text) > limit:
        cut = _space_cut(text, limit)
        if cut is not None:
            head = text[:cut]
            if len(tokenizer(head, add_special_tokens=False)["input_ids"]) > max_tokens:
                return head
        limit *= 2
    return text


def clip_text_pair(tokenizer: Any, example: Any, max_tokens: int) -> Any:
    """`example` (with ``text`` and ``text_pair``) with each text clipped by `clip_text`: with
    truncation="longest_first" a text that keeps more than `max_tokens` tokens is cut to the same
    length as the whole text would be."""
    import dataclasses

    text = clip_text(tokenizer, example.text, max_tokens)
    pair = example.text_pair
    if pair is not None:
        pair = clip_text(tokenizer, pair, max_tokens)
    if text is example.text and pair is example.text_pair:
        return example
    return dataclasses.replace(example, text=text, text_pair=pair)


def text_pair_length(tokenizer: Any, ex: Any) -> int:
    return len(tokenizer(ex.text, ex.text_pair)["input_ids"])


def require_labels(spec: Any) -> None:
    """A task that predicts labels needs at least one."""
    from app.engine.model import SpecError

    if len(spec.labels) < 1:
        raise SpecError("labels: a classification or labelling task needs at least one label", field="labels")
