"""Word splitting and BIO span decoding, shared by token classification and its metrics."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD_RE = re.compile(r"[^\W_]+|\S")


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split ``text`` into words on whitespace and punctuation, keeping ``(start, end)`` char offsets.

    Runs of letters/digits form one word; every other non-space character is a word of its own.
    """
    words: list[str] = []
    offsets: list[tuple[int, int]] = []
    for match in _WORD_RE.finditer(text):
        words.append(match.group())
        offsets.append((match.start(), match.end()))
    return words, offsets


def _split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) for a tag.  ``O`` -> ("O", "");  ``B-PER`` -> ("B", "PER");
    a bare ``PER`` (IO / plain scheme) -> ("I", "PER");  a bare ``B``/``I``/``E``/``S`` -> (.., "_")."""
    if tag == "O" or not tag:
        return "O", ""
    if len(tag) >= 2 and tag[0] in "BIES" and tag[1] in "-_":
        return tag[0], tag[2:] or "_"
    if tag in ("B", "I", "E", "S"):
        return tag, "_"
    return "I", tag


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != type_


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != type_


def decode_bio(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, first_word, last_word_inclusive)`` from a tag sequence.

    Follows seqeval's default (conlleval-style, non-strict) chunking: IOB2, IOB1 and IOBES tags are
    understood, a stray ``I-X`` (after ``O`` or another type) starts a new entity, a type change ends
    one.  Tags without a prefix (plain ``PER``) are read as ``I-PER`` so runs of equal plain tags form one
    entity; ``O`` is outside.
    """
    chunks: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, raw in enumerate([*tags, "O"]):
        tag, type_ = _split_tag(raw)
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def spans_with_offsets(tags: Sequence[str], word_offsets: Sequence[tuple[int, int]], text: str) -> list[dict]:
    """Entities as ``[{"type", "start", "end", "text"}]`` with character offsets (end exclusive)."""
    if len(tags) > len(word_offsets):
        raise ValueError(f"{len(tags)} tags but only {len(word_offsets)} word offsets")
    spans = []
    for type_, first, last in decode_bio(tags):
        start, end = word_offsets[first][0], word_offsets[last][1]
        spans.append({"type": type_, "start": start, "end": end, "text": text[start:end]})
    return spans
