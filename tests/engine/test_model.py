"""Prefix encoder, heads, MLP fold, gradients, layer choice and checkpoints."""

from __future__ import annotations

import pytest
import torch

from app.engine.backbone import backbone_from_config
from app.engine.batch import collate, task_forward
from app.engine.checkpoint import (
    BackboneMismatchError,
    CheckpointError,
    checkpoint_bytes,
    load_checkpoint,
    load_checkpoint_bytes,
    read_metadata,
    save_checkpoint,
)
from app.engine.heads import VERBALIZER_MASK_POSITION, label_word_embeddings
from app.engine.model import SpecError, TaskModel, TaskSpec
from app.engine.predict import encode_examples, prepare
from app.engine.prefix import LayerSpecError, parse_layers
from tests.helpers import tiny_config


def _batch(tokenizer, texts):
    return collate([dict(tokenizer(t)) for t in texts], tokenizer.pad_token_id)


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("all", [0, 1, 2, 3, 4, 5]),
        (None, [0, 1, 2, 3, 4, 5]),
        ("lower-half", [0, 1, 2]),
        ("upper-half", [3, 4, 5]),
        ("first:2", [0, 1]),
        ("last:1", [5]),
        ("0-2,5", [0, 1, 2, 5]),
        ([4, 1, 1], [1, 4]),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 6) == expected


@pytest.mark.parametrize("spec", ["7", "2-1", "x", "first:9", ""])
def test_parse_layers_errors(spec):
    if spec == "":
        assert parse_layers(spec, 6) == list(range(6))
        return
    with pytest.raises(LayerSpecError):
        parse_layers(spec, 6)


def test_spec_validation_messages():
    with pytest.raises(SpecError, match="task_type") as info:
        TaskSpec("multiple-choice", labels=["a"]).validate()
    assert info.value.field == "task_type" and "regression" in str(info.value)
    with pytest.raises(SpecError, match="labels"):
        TaskSpec("classification").validate()
    with pytest.raises(SpecError, match="verbalizer"):
        TaskSpec("token-classification", labels=["O"], head="verbalizer").validate()


@pytest.mark.parametrize("layers", ["all", "upper-half", "0,2"])
def test_mlp_fold_gives_the_same_outputs(tiny_backbone, tokenizer, layers):
    spec = TaskSpec(
        "classification", labels=["a", "b"], reparameterize=True, reparam_hidden=24, layers=layers
    )
    model = TaskModel(spec, tiny_backbone).eval()
    batch = _batch(tokenizer, ["first text", "a second, longer text here"])
    with torch.no_grad():
        before = model(batch)
    served = model.to_serving()
    after = task_forward(served, tiny_backbone, batch)
    assert (before - after).abs().max() <= 1e-5
    # what is served holds no MLP: flat K/V only, zero at layers without a prefix
    assert served.kv.shape == (tiny_backbone.num_layers, 2, spec.prefix_length, tiny_backbone.kv_size)
    off = ~served.layer_mask
    assert torch.count_nonzero(served.kv[off]) == 0


@pytest.mark.parametrize("method", ["p-tuning-v2", "prompt-tuning", "fine-tuning"])
def test_gradients_reach_only_trainable_parameters(tiny_backbone, tokenizer, method):
    spec = TaskSpec("classification", labels=["a", "b"], method=method, prefix_length=4)
    model = TaskModel(spec, tiny_backbone).train()
    batch = _batch(tokenizer, ["one", "two three"])
    loss = model(batch).logsumexp(-1).sum()
    loss.backward()
    assert all(p.grad is None for p in tiny_backbone.model.parameters()), (
        "the shared backbone must stay frozen"
    )
    trainable = model.trainable_parameters()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert trainable and not missing, missing
    n_backbone = tiny_backbone.num_parameters()
    if method == "fine-tuning":
        assert model.num_trainable() > 0.9 * n_backbone
    else:
        assert model.num_trainable() < 0.2 * n_backbone


def test_prefix_parameter_count_matches_the_paper_formula(tiny_backbone):
    spec = TaskSpec("classification", labels=["a", "b"], prefix_length=8, layers="0,1")
    model = TaskModel(spec, tiny_backbone)
    assert sum(p.numel() for p in model.prefix.parameters()) == 2 * 2 * 8 * tiny_backbone.kv_size


def test_heads_shapes(tiny_backbone, tokenizer):
    batch = _batch(tokenizer, ["a b c", "d e"])
    L = batch["input_ids"].shape[1]
    cases = [
        (TaskSpec("classification", labels=["a", "b", "c"]), (2, 3)),
        (TaskSpec("token-classification", labels=["O", "B-X", "I-X", "B-Y"]), (2, L, 4)),
        (TaskSpec("question-answering"), (2, L, 2)),
        (TaskSpec("classification", labels=["good", "bad"], head="verbalizer"), (2, 2)),
    ]
    for spec, shape in cases:
        with torch.no_grad():
            assert tuple(TaskModel(spec, tiny_backbone).eval()(batch).shape) == shape


def test_verbalizer_inits_from_label_words_and_reads_the_mask(tiny_backbone, tokenizer):
    spec = TaskSpec(
        "classification",
        labels=["positive", "negative"],
        head="verbalizer",
        label_words=["great", "terrible"],
    )
    model = TaskModel(spec, tiny_backbone)
    expected = label_word_embeddings(tiny_backbone, ["great", "terrible"])
    assert torch.equal(model.head.label_matrix.detach(), expected)
    from app.engine.tasks.classification import ClassificationExample

    feats = encode_examples(
        spec, tokenizer, [ClassificationExample("it was fine", label="positive")], with_labels=True
    )
    assert feats[0]["input_ids"][VERBALIZER_MASK_POSITION] == tokenizer.mask_token_id
    assert feats[0]["input_ids"][0] == tokenizer.cls_token_id


@pytest.mark.parametrize("method", ["p-tuning-v2", "prompt-tuning", "fine-tuning"])
def test_checkpoint_round_trip(tiny_backbone, tokenizer, tmp_path, method):
    spec = TaskSpec(
        "classification", labels=["a", "b", "c"], method=method, prefix_length=5, layers="lower-half"
    )
    served = TaskModel(spec, tiny_backbone).eval().to_serving()
    path = tmp_path / "v1.safetensors"
    sha = save_checkpoint(served, path, tiny_backbone, {"metrics": {"accuracy": 0.5}, "source": "unit test"})
    loaded = load_checkpoint(path, tiny_backbone, expected_sha256=sha)
    batch = _batch(tokenizer, ["round trip", "of a checkpoint"])
    assert torch.allclose(
        task_forward(served, tiny_backbone, batch), task_forward(loaded, tiny_backbone, batch), atol=1e-6
    )
    meta = read_metadata(path)
    assert meta["spec"]["method"] == method
    assert meta["metrics"] == {"accuracy": 0.5}
    assert meta["backbone"]["weights_sha256"] == tiny_backbone.identity.weights_sha256
    assert loaded.meta["metrics"] == {"accuracy": 0.5}
    # the server's cache keeps no metadata document (it lives in the DB and the sidecar), only the
    # backbone precision the version was trained for (one shared dict per precision)
    lean = load_checkpoint_bytes(path.read_bytes(), tiny_backbone, keep_meta=False)
    assert lean.meta == {"precision": "fp32"}
    assert meta["precision"] == "fp32"
    assert torch.allclose(
        task_forward(lean, tiny_backbone, batch), task_forward(loaded, tiny_backbone, batch)
    )
    # the file holds only the prefix layers that carry one
    if method == "p-tuning-v2":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            assert f.get_slice("prefix.kv").get_shape()[0] == 2


def test_checkpoint_refuses_another_backbone(tiny_backbone, tokenizer):
    other = backbone_from_config(tiny_config("bert"), tokenizer, name="other", seed=7)
    served = TaskModel(TaskSpec("classification", labels=["a", "b"]), tiny_backbone).to_serving()
    data = checkpoint_bytes(served, tiny_backbone)
    with pytest.raises(BackboneMismatchError, match="trained on backbone"):
        load_checkpoint_bytes(data, other)


def test_checkpoint_refuses_corrupt_or_foreign_files(tiny_backbone, tmp_path):
    served = TaskModel(TaskSpec("classification", labels=["a", "b"]), tiny_backbone).to_serving()
    data = checkpoint_bytes(served, tiny_backbone)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint_bytes(data, tiny_backbone, expected_sha256="0" * 64)
    with pytest.raises(CheckpointError):
        load_checkpoint_bytes(b"\x80\x04K\x01.", tiny_backbone)  # a pickle is never loaded
    from safetensors.torch import save

    with pytest.raises(CheckpointError, match="not a PromptHub checkpoint"):
        load_checkpoint_bytes(save({"x": torch.zeros(1)}), tiny_backbone)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors", tiny_backbone)


def test_prepare_refuses_long_text_in_refuse_mode(tiny_backbone, tokenizer):
    from app.engine.data import DataError

    served = TaskModel(
        TaskSpec("classification", labels=["a", "b"], max_length=16), tiny_backbone
    ).to_serving()
    long = " ".join(["word"] * 40)
    prepared = prepare(served, tokenizer, [{"text": long}])
    assert len(prepared.features[0]["input_ids"]) == 16
    with pytest.raises(DataError) as err:
        prepare(served, tokenizer, [{"text": "ok"}, {"text": long}], overflow="refuse")
    assert err.value.line == 2 and err.value.field == "text"


@pytest.mark.parametrize("model_type", ["bert", "mpnet", "deberta-v2"])
def test_token_kv_is_each_layers_key_value_of_real_tokens(tokenizer, model_type):
    bb = backbone_from_config(tiny_config(model_type), tokenizer, name=f"tiny-{model_type}")
    ids = torch.tensor([2000, 3000, 4000])
    kv = bb.token_kv(ids)
    assert kv.shape == (bb.num_layers, 2, 3, bb.kv_size)
    # layer 0's keys/values are its projections of the embedded tokens
    hidden = bb._adapter.embed(ids[None], None, torch.ones(1, 3, dtype=torch.long))
    k_mod, v_mod = bb._kv_modules(0)
    torch.testing.assert_close(kv[0, 0], k_mod(hidden)[0])
    torch.testing.assert_close(kv[0, 1], v_mod(hidden)[0])
    # later layers differ from layer 0 (they see the encoder's own hidden states)
    assert not torch.allclose(kv[1, 0], kv[0, 0])


def test_prefix_init_tokens_starts_from_the_encoders_kv(tiny_backbone):
    spec = TaskSpec(task_type="classification", labels=["a", "b"], prefix_init="tokens", layers="upper-half")
    model = TaskModel(spec, tiny_backbone)
    raw = model.prefix.raw().detach()
    upper = list(range(tiny_backbone.num_layers // 2, tiny_backbone.num_layers))
    assert spec.layers == upper
    assert raw.shape == (len(upper), 2, 16, tiny_backbone.kv_size)
    from app.engine.model import token_kv_init

    torch.testing.assert_close(raw, token_kv_init(tiny_backbone, 16, upper))
    full = tiny_backbone.token_kv(torch.zeros(1, dtype=torch.long))  # shape sanity of the helper
    assert full.shape[0] == tiny_backbone.num_layers
    # the same seed gives the same init; random init is the default and differs
    again = TaskModel(TaskSpec.from_dict(spec.to_dict()), tiny_backbone).prefix.raw().detach()
    torch.testing.assert_close(raw, again)
    rand = (
        TaskModel(TaskSpec(task_type="classification", labels=["a", "b"]), tiny_backbone)
        .prefix.raw()
        .detach()
    )
    assert not torch.allclose(rand[upper[0] :], raw)
    with pytest.raises(SpecError, match="prefix_init"):
        TaskSpec(task_type="classification", labels=["a"], prefix_init="zeros").validate()


@pytest.mark.parametrize(
    "spec",
    [
        TaskSpec("classification", labels=["a", "b", "c"]),
        TaskSpec("classification", labels=["good", "bad"], head="verbalizer"),
        TaskSpec("token-classification", labels=["X", "Y"]),
        TaskSpec("question-answering"),
        TaskSpec("regression"),
    ],
    ids=["cls", "verbalizer", "tokens", "qa", "regression"],
)
def test_frozen_head_equals_the_module_head(tiny_backbone, tokenizer, spec):
    from app.engine.heads import FrozenHead

    served = TaskModel(spec, tiny_backbone).eval().to_serving()
    data = checkpoint_bytes(served, tiny_backbone, {"source": "unit test"})
    module = load_checkpoint_bytes(data, tiny_backbone)
    frozen = load_checkpoint_bytes(data, tiny_backbone, keep_meta=False, frozen_head=True)
    assert isinstance(frozen.head, FrozenHead) and not isinstance(module.head, FrozenHead)
    hidden = torch.randn(3, 7, tiny_backbone.hidden_size)
    torch.testing.assert_close(frozen.head(hidden), module.head(hidden), rtol=0, atol=0)
    # built straight from the tensors, it is what converting the module gives
    converted = FrozenHead.from_module(module.head)
    assert frozen.head.position == converted.position and frozen.head.names == converted.names
    assert torch.equal(frozen.head.weight, converted.weight) and torch.equal(frozen.head.bias, converted.bias)
    assert frozen.nbytes() == module.nbytes()
    assert frozen.head.state_dict().keys() == module.head.state_dict().keys()
    # a frozen task round-trips through a checkpoint like a module one
    again = load_checkpoint_bytes(checkpoint_bytes(frozen, tiny_backbone), tiny_backbone)
    torch.testing.assert_close(again.head(hidden), module.head(hidden), rtol=0, atol=0)
    moved = frozen.to("cpu", torch.float64)
    assert moved.head.weight.dtype == torch.float64
