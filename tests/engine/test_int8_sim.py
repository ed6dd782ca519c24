"""Training for an int8 backbone: the simulated layer loop computes what the served int8 ONNX graph
computes, gradients reach the prompt through it, and the run leaves the shared backbone alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from app.engine import int8_sim as Q
from app.engine import onnx_runtime as O
from app.engine.backbone import BackboneError
from app.engine.batch import mixed_forward
from app.engine.model import TaskSpec
from app.engine.train import train_task
from tests.engine.test_train import FAST, sentiment
from tests.helpers import MIXED_TEXTS, collate_texts, every_head_tasks, make_tiny_backbone


@pytest.fixture(scope="module")
def bb():
    return make_tiny_backbone(name="tiny-int8-sim")


def _outputs(bb, runner, tasks, batch):
    bb.runtime = runner
    try:
        with torch.no_grad():
            return mixed_forward(bb, tasks, batch)
    finally:
        bb.runtime = None


@pytest.mark.parametrize("keep_ffn_out_fp32", [True, False])
def test_the_simulation_computes_what_the_served_int8_graph_computes(bb, tmp_path, keep_ffn_out_fp32):
    tasks = every_head_tasks(bb)
    batch = collate_texts(bb, MIXED_TEXTS)
    graph = O.build(bb, "int8", tmp_path, keep_ffn_out_fp32=keep_ffn_out_fp32)
    served = _outputs(bb, O.OnnxLayerLoop(graph, "int8"), tasks, batch)
    fp32 = _outputs(bb, None, tasks, batch)
    sim = Q.simulated(bb, keep_ffn_out_fp32)
    simulated = _outputs(sim, None, tasks, batch)
    int8_error = max((f - s).abs().max().item() for f, s in zip(fp32, served, strict=True))
    sim_error = max((q - s).abs().max().item() for q, s in zip(simulated, served, strict=True))
    assert int8_error > 1e-4  # int8 really differs from fp32 on these rows
    # the simulation lands on the served int8 numbers (float rounding apart), not the fp32 ones
    assert sim_error < 0.01 * int8_error, (int8_error, sim_error)
    expected = 5 if keep_ffn_out_fp32 else 6  # q, k, v, attention out, FFN in (, FFN out) per layer
    assert len(Q.quantized_linears(bb, keep_ffn_out_fp32)) == expected * bb.num_layers


def test_the_shared_backbone_is_left_alone_and_the_copy_made_once(bb):
    before = {n: p.clone() for n, p in bb.model.state_dict().items()}
    sim = Q.for_training(bb, "int8")
    assert sim is not bb and Q.for_training(sim, "int8") is sim
    assert Q.for_training(bb, "fp32") is bb and Q.for_training(bb, None) is bb
    assert all(isinstance(m, nn.Linear) for n, m in bb.model.named_modules() if n.endswith("query"))
    assert any(isinstance(m, Q.Int8Linear) for m in sim.model.modules())
    assert sim.identity == bb.identity and sim.tokenizer is bb.tokenizer
    assert sim.num_parameters() == bb.num_parameters()  # a run's trainable fraction is of the backbone
    after = bb.model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_run_for_int8_trains_its_prompt_through_the_simulation(bb):
    data = sentiment(160, 0)
    cfg = replace(FAST, precision="int8")
    result = train_task(bb, TaskSpec("classification", prefix_length=8), data, sentiment(80, 1), cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]  # the straight-through gradient
    fp32 = train_task(bb, TaskSpec("classification", prefix_length=8), data, sentiment(80, 1), FAST)
    assert not torch.equal(result.task.kv, fp32.task.kv)  # it trained against other numbers
    assert result.trainable_fraction == fp32.trainable_fraction  # of the same backbone
    with pytest.raises(ValueError, match="not with fine-tuning"):
        train_task(bb, TaskSpec("classification", method="fine-tuning"), data, None, cfg)


def test_int8_training_is_for_the_bert_family_only():
    with pytest.raises(BackboneError, match="BERT family"):
        Q.simulated(make_tiny_backbone("mpnet", name="tiny-int8-mpnet"))
