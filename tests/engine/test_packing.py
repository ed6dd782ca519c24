"""Packed tokens (architectures.Packing): the layer loop runs the per-token work of a padded batch
on its real tokens only, and every token's result, and every gradient, is the padded loop's."""

from __future__ import annotations

import pytest
import torch

from app.engine import backbone as B
from app.engine.architectures import Packing
from app.engine.batch import build_prefix_batch, mixed_forward
from tests.helpers import MIXED_TEXTS, collate_texts, every_head_tasks, make_tiny_backbone, tokens_only


def _padded(bb):
    """The same backbone with packing off (a copy: its own switch, the same weights)."""
    import copy

    other = copy.copy(bb)
    other.pack_tokens = False
    return other


@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet"])
def test_a_packed_mixed_batch_equals_the_padded_one_at_every_token(model_type):
    bb = make_tiny_backbone(model_type, name=f"tiny-pack-{model_type}")
    tasks = every_head_tasks(bb)  # every head, prefixes of several lengths and layers, input prompts
    batch = collate_texts(bb, MIXED_TEXTS)
    packing = bb.packing(batch["attention_mask"])
    assert packing is not None and packing.tokens == int(batch["attention_mask"].sum())
    with torch.no_grad():
        packed = tokens_only(mixed_forward(bb, tasks, batch), batch)
        padded = tokens_only(mixed_forward(_padded(bb), tasks, batch), batch)
    for t, a, b in zip(tasks, packed, padded, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (t.spec.task_type, (a - b).abs().max())


def test_pad_positions_come_back_as_zeros_and_tokens_as_before():
    bb = make_tiny_backbone(name="tiny-pack-zeros")
    batch = collate_texts(bb, MIXED_TEXTS)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        packed = bb(batch["input_ids"], batch["attention_mask"])
        padded = _padded(bb)(batch["input_ids"], batch["attention_mask"])
    assert packed.shape == padded.shape
    assert torch.count_nonzero(packed[~mask]) == 0
    assert torch.allclose(packed[mask], padded[mask], atol=1e-5)


def test_gradients_through_a_packed_batch_equal_the_padded_ones():
    """Training packs too: the prefix's gradient is the padded loop's (no dropout: eval mode)."""
    bb = make_tiny_backbone(name="tiny-pack-grad")
    tasks = every_head_tasks(bb)[:4]
    batch = collate_texts(bb, MIXED_TEXTS[:4])
    mask = batch["attention_mask"].bool()
    grads = []
    for model in (bb, _padded(bb)):
        prefix = build_prefix_batch(tasks, bb.num_layers, bb.kv_size)
        kv = prefix.kv.clone().requires_grad_(True)
        hidden = model(batch["input_ids"], batch["attention_mask"], prefix=B.PrefixBatch(kv, prefix.mask))
        (hidden[mask] ** 2).sum().backward()
        grads.append(kv.grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_when_the_loop_packs():
    bb = make_tiny_backbone(name="tiny-pack-when")
    padded_batch = collate_texts(bb, MIXED_TEXTS)  # most positions are padding
    full = collate_texts(bb, ["one two three", "four five six"])  # no padding at all
    assert int(full["attention_mask"].sum()) == full["attention_mask"].numel()
    assert isinstance(bb.packing(padded_batch["attention_mask"]), Packing)
    assert bb.packing(full["attention_mask"]) is None  # nothing to skip: the padded loop
    mostly_full = torch.ones(10, 10, dtype=torch.long)
    mostly_full[0, -1] = 0  # 99% tokens: below the threshold's saving
    assert bb.packing(mostly_full) is None
    assert _padded(bb).packing(padded_batch["attention_mask"]) is None  # switched off
    deberta = make_tiny_backbone("deberta-v2", name="tiny-pack-deberta")
    assert deberta.packing(padded_batch["attention_mask"]) is None  # its conv reads whole rows


def test_packing_round_trips_the_real_tokens():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    x = torch.arange(12 * 2, dtype=torch.float).view(3, 4, 2)
    p = Packing(mask)
    assert p.tokens == 8
    packed = p.pack(x)
    assert packed.shape == (8, 2)
    assert torch.equal(packed, x[mask.bool()])
    back = p.unpack(packed)
    assert torch.equal(back[mask.bool()], x[mask.bool()]) and torch.count_nonzero(back[~mask.bool()]) == 0
