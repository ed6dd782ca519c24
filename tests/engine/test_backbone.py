"""The prefix-aware encoder loop against the plain Hugging Face models, for every architecture."""

from __future__ import annotations

import pytest
import torch

from app.engine.backbone import BackboneError, PrefixBatch, backbone_from_config, resolve_backbone
from app.engine.batch import collate, mixed_forward, task_forward
from app.engine.model import TaskModel, TaskSpec
from tests.helpers import tiny_config

ARCHS = ["bert", "roberta", "electra", "xlm-roberta", "mpnet", "deberta-v2", "deberta-v2-conv"]


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (3, 12), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="module", params=ARCHS)
def arch_backbone(request, tokenizer):
    return backbone_from_config(tiny_config(request.param), tokenizer, name=request.param)


def test_plain_forward_equals_hf_model(arch_backbone):
    ids, mask = _inputs()
    with torch.no_grad():
        ref = arch_backbone.model(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = arch_backbone(ids, mask)
    valid = mask.bool()
    assert (ref - ours)[valid].abs().max() <= 1e-5


def test_masked_out_prefix_equals_no_prefix(arch_backbone):
    ids, mask = _inputs()
    bb = arch_backbone
    kv = torch.randn(bb.num_layers, 2, 3, 7, bb.kv_size) * 3
    with torch.no_grad():
        plain = bb(ids, mask)
        masked = bb(ids, mask, prefix=PrefixBatch(kv, torch.zeros(bb.num_layers, 3, 7)))
        active = bb(ids, mask, prefix=PrefixBatch(kv, torch.ones(bb.num_layers, 3, 7)))
    valid = mask.bool()
    assert (plain - masked)[valid].abs().max() <= 1e-5
    assert (plain - active)[valid].abs().max() > 1e-3  # a live prefix does change the output


def test_positions_do_not_depend_on_prefix_length(arch_backbone):
    """The same 3-slot prefix, padded to 9 slots with masked entries, gives the same output."""
    ids, mask = _inputs()
    bb = arch_backbone
    kv3 = torch.randn(bb.num_layers, 2, 3, 3, bb.kv_size)
    kv9 = torch.cat([kv3, torch.randn(bb.num_layers, 2, 3, 6, bb.kv_size)], dim=3)
    m9 = torch.cat([torch.ones(bb.num_layers, 3, 3), torch.zeros(bb.num_layers, 3, 6)], dim=2)
    with torch.no_grad():
        a = bb(ids, mask, prefix=PrefixBatch(kv3, torch.ones(bb.num_layers, 3, 3)))
        b = bb(ids, mask, prefix=PrefixBatch(kv9, m9))
    assert (a - b)[mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ["bert", "mpnet", "deberta-v2"])
def test_mixed_batch_equals_single_task(arch, tokenizer):
    bb = backbone_from_config(tiny_config(arch), tokenizer, name=arch)
    specs = [
        TaskSpec("classification", labels=["a", "b", "c"], prefix_length=4),
        TaskSpec(
            "classification", labels=["x", "y"], prefix_length=9, layers="upper-half", reparameterize=True
        ),
        TaskSpec("token-classification", labels=["O", "B-X", "I-X"], prefix_length=2, layers="0,2"),
        TaskSpec("question-answering", prefix_length=5, layers="lower-half"),
        TaskSpec("classification", labels=["p", "q"], method="prompt-tuning", prefix_length=3),
        TaskSpec("classification", labels=["p", "q"], method="prompt-tuning", prefix_length=6),
        TaskSpec(
            "classification",
            labels=["p", "q"],
            head="verbalizer",
            label_words=["yes", "no"],
            prefix_length=16,
        ),
    ]
    tasks = []
    torch.manual_seed(1)
    for s in specs:
        m = TaskModel(s, bb)
        if m.prefix is not None and not s.reparameterize:
            with torch.no_grad():
                m.prefix.weight.normal_()
        tasks.append(m.to_serving())
    texts = [
        "hello world",
        "a much longer sentence with many words in it",
        "short",
        "what is it",
        "ok",
        "b c d",
        "yes",
    ]
    feats = [dict(tokenizer(t)) for t in texts]
    mixed = mixed_forward(bb, tasks, collate(feats, tokenizer.pad_token_id))
    for t, f, row in zip(tasks, feats, mixed, strict=True):
        single = task_forward(t, bb, collate([f], tokenizer.pad_token_id))[0]
        n = len(f["input_ids"])
        a, b = (row[:n], single[:n]) if row.dim() == 2 else (row, single)
        assert (a - b).abs().max() <= 1e-4


def test_prefix_and_batch_shape_checks(tiny_backbone):
    ids, mask = _inputs()
    bad = PrefixBatch(torch.zeros(2, 2, 3, 1, tiny_backbone.kv_size), torch.ones(2, 3, 1))
    with pytest.raises(BackboneError, match="layers"):
        tiny_backbone(ids, mask, prefix=bad)


def test_unknown_backbone_name_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="not a known name"):
        resolve_backbone(str(tmp_path / "nope"))


def test_identity_changes_with_weights(tokenizer):
    a = backbone_from_config(tiny_config("bert"), tokenizer, seed=0)
    b = backbone_from_config(tiny_config("bert"), tokenizer, seed=1)
    assert a.identity.config_sha256 == b.identity.config_sha256
    assert a.identity.weights_sha256 != b.identity.weights_sha256


def test_pickled_backbone_weights_are_refused(tiny_backbone, tmp_path):
    """Only safetensors weights are loaded: a folder with pytorch_model.bin alone is an error."""
    from app.engine.backbone import load_backbone

    tiny_backbone.model.save_pretrained(tmp_path)
    tiny_backbone.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(tiny_backbone.model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises((BackboneError, OSError, ValueError, EnvironmentError)):
        load_backbone(str(tmp_path))
