"""PEFT interop (app.engine.peft) checked against PEFT 0.21 itself on a tiny random BERT: an exported
task loads with PeftModel.from_pretrained and gives the task's logits; an adapter trained with PEFT
imports and gives PEFT's outputs, also in mixed batches; what cannot be exact is refused."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from app.engine.batch import collate, mixed_forward
from app.engine.embed import plain_task
from app.engine.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HEAD_FILE,
    PeftError,
    apply_head,
    export_adapter,
    import_adapter,
    write_head,
)
from tests.helpers import make_serving_task, make_tiny_backbone

peft = pytest.importorskip("peft")

TEXTS = ["hello world", "a somewhat longer sentence to read here", "short"]
PAIRS = [("is it raining?", "the streets are wet"), ("one", "two three four")]


def _base(backbone_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(backbone_dir), add_pooling_layer=False).eval()


def _peft_hidden(backbone_dir, adapter_dir, enc) -> torch.Tensor:
    model = peft.PeftModel.from_pretrained(_base(backbone_dir), str(adapter_dir)).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's "token type ids are ignored", transformers' cache renames
        return model(**enc).last_hidden_state


def _ours(backbone, task, enc) -> torch.Tensor:
    batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return torch.stack(mixed_forward(backbone, [task] * batch["input_ids"].shape[0], batch))


def _compare(out, ref, mask) -> float:
    if out.dim() == 3:  # per-token logits: only the real tokens
        return float((out - ref)[mask.bool()].abs().max())
    return float((out - ref).abs().max())


@pytest.mark.parametrize(
    ("task_type", "spec"),
    [
        ("classification", {}),
        ("classification", {"head": "verbalizer", "label_words": ["bad", "okay", "good"]}),
        ("token-classification", {"prefix_length": 7}),
        ("regression", {"reparameterize": True, "reparam_hidden": 16}),
    ],
)
def test_export_loads_in_peft_with_the_tasks_outputs(
    tiny_backbone, tiny_backbone_dir, tmp_path, task_type, spec
):
    task = make_serving_task(tiny_backbone, task_type, seed=11, **spec)
    export_adapter(task, tiny_backbone, tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["num_virtual_tokens"] == task.prefix_length
    enc = tiny_backbone.tokenizer(TEXTS, padding=True, return_tensors="pt")
    logits = apply_head(tmp_path / HEAD_FILE, _peft_hidden(tiny_backbone_dir, tmp_path, enc))
    ours = _ours(tiny_backbone, task, enc)
    assert logits.shape == ours.shape
    assert _compare(logits, ours, enc["attention_mask"]) <= 1e-5
    # PEFT's own numbering without the shifted position table is NOT the task's output
    cfg = dict(config, modules_to_save=None)
    plain = tmp_path / "no-table"
    plain.mkdir()
    (plain / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    save_file(
        {"prompt_embeddings": load_file(tmp_path / ADAPTER_WEIGHTS)["prompt_embeddings"]},
        plain / ADAPTER_WEIGHTS,
    )
    shifted = apply_head(tmp_path / HEAD_FILE, _peft_hidden(tiny_backbone_dir, plain, enc))
    assert _compare(shifted, ours, enc["attention_mask"]) > 1e-3


def _peft_trained_adapter(backbone, backbone_dir, out, *, projection: bool, p: int = 5, seed: int = 3):
    """An adapter made by PEFT itself (random weights stand in for training), plus a head file."""
    torch.manual_seed(seed)
    config = peft.PrefixTuningConfig(
        task_type=peft.TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=p,
        prefix_projection=projection,
        encoder_hidden_size=24,
    )
    model = peft.get_peft_model(_base(backbone_dir), config)
    with torch.no_grad():
        for param in model.prompt_encoder.parameters():
            param.normal_(0, 0.5)
    model.save_pretrained(str(out))
    head_of = make_serving_task(backbone, "classification", seed=seed)  # its head stands for a trained one
    write_head(head_of, backbone, out / HEAD_FILE)
    return out


@pytest.mark.parametrize("projection", [False, True])
def test_peft_adapter_imports_with_peft_outputs(tiny_backbone, tiny_backbone_dir, tmp_path, projection):
    folder = _peft_trained_adapter(tiny_backbone, tiny_backbone_dir, tmp_path / "a", projection=projection)
    task, meta = import_adapter(folder, tiny_backbone)
    assert task.spec.position_offset == 5 and not task.spec.segment_ids
    assert meta["training"]["peft"]["num_virtual_tokens"] == 5
    for enc in (
        tiny_backbone.tokenizer(TEXTS, padding=True, return_tensors="pt"),
        tiny_backbone.tokenizer(*map(list, zip(*PAIRS, strict=True)), padding=True, return_tensors="pt"),
    ):
        ref = apply_head(folder / HEAD_FILE, _peft_hidden(tiny_backbone_dir, folder, enc))
        assert _compare(_ours(tiny_backbone, task, enc), ref, enc["attention_mask"]) <= 1e-5


def test_imported_rows_mix_with_native_and_embedding_rows(tiny_backbone, tiny_backbone_dir, tmp_path):
    folder = _peft_trained_adapter(tiny_backbone, tiny_backbone_dir, tmp_path / "a", projection=False, p=6)
    imported, _ = import_adapter(folder, tiny_backbone)
    native = make_serving_task(tiny_backbone, "token-classification", seed=2)
    tasks = [imported, native, plain_task(), imported, native]
    tok = tiny_backbone.tokenizer
    texts = ["first row here", "second", "the third row is longest of all", ("a pair", "of texts"), "fifth"]
    feats = [dict(tok(*t) if isinstance(t, tuple) else tok(t)) for t in texts]
    mixed = mixed_forward(tiny_backbone, tasks, collate(feats, tok.pad_token_id))
    for i, task in enumerate(tasks):
        alone = mixed_forward(tiny_backbone, [task], collate([feats[i]], tok.pad_token_id))[0]
        got = mixed[i][: alone.shape[0]] if alone.dim() == 2 else mixed[i]
        assert (got - alone).abs().max().item() <= 1e-5, i


def test_round_trips(tiny_backbone, tiny_backbone_dir, tmp_path):
    task = make_serving_task(tiny_backbone, "classification", seed=4)
    export_adapter(task, tiny_backbone, tmp_path / "out")
    back, _ = import_adapter(tmp_path / "out", tiny_backbone)
    assert back.spec.position_offset == 0 and back.spec.segment_ids
    assert torch.equal(back.kv, task.kv) and back.spec.labels == task.spec.labels
    # a PEFT adapter imported, then exported again: PEFT loads it and gives the same outputs
    folder = _peft_trained_adapter(tiny_backbone, tiny_backbone_dir, tmp_path / "a", projection=False)
    imported, _ = import_adapter(folder, tiny_backbone)
    export_adapter(imported, tiny_backbone, tmp_path / "again")
    assert json.loads((tmp_path / "again" / ADAPTER_CONFIG).read_text())["modules_to_save"] is None
    enc = tiny_backbone.tokenizer(TEXTS, padding=True, return_tensors="pt")
    ref = apply_head(folder / HEAD_FILE, _peft_hidden(tiny_backbone_dir, folder, enc))
    again = apply_head(
        tmp_path / "again" / HEAD_FILE, _peft_hidden(tiny_backbone_dir, tmp_path / "again", enc)
    )
    assert (ref - again).abs().max().item() <= 1e-6


def test_what_cannot_be_exact_is_refused(tiny_backbone, tmp_path):
    cases = {
        "layers": make_serving_task(tiny_backbone, "classification", layers="0-1"),
        "prompt-tuning": make_serving_task(tiny_backbone, "classification", method="prompt-tuning"),
        "question answering": make_serving_task(tiny_backbone, "question-answering"),
    }
    for words, task in cases.items():
        with pytest.raises(PeftError, match=words.split()[0]):
            export_adapter(task, tiny_backbone, tmp_path / "x")
    mpnet = make_tiny_backbone("mpnet")
    with pytest.raises(PeftError, match="BERT-family"):
        export_adapter(make_serving_task(mpnet, "classification"), mpnet, tmp_path / "y")


def test_bad_adapters_are_refused_with_the_reason(tiny_backbone, tiny_backbone_dir, tmp_path):
    good = _peft_trained_adapter(tiny_backbone, tiny_backbone_dir, tmp_path / "good", projection=False)

    def variant(name, edit):
        d = tmp_path / name
        shutil.copytree(good, d)
        edit(d)
        return d

    def config_edit(**kv):
        def edit(d):
            cfg = json.loads((d / ADAPTER_CONFIG).read_text())
            cfg.update(kv)
            (d / ADAPTER_CONFIG).write_text(json.dumps(cfg))

        return edit

    def add_classifier(d):
        from safetensors.torch import load_file, save_file

        w = load_file(d / ADAPTER_WEIGHTS)
        w["base_model.classifier.weight"] = torch.zeros(2, 32)
        save_file(w, d / ADAPTER_WEIGHTS)

    cases = [
        (variant("lora", config_edit(peft_type="LORA")), "PREFIX_TUNING"),
        (variant("layers", config_edit(num_layers=12)), "num_layers"),
        (variant("nohead", lambda d: (d / HEAD_FILE).unlink()), HEAD_FILE),
        (variant("noweights", lambda d: (d / ADAPTER_WEIGHTS).unlink()), ADAPTER_WEIGHTS),
        (variant("tokens", config_edit(num_virtual_tokens=9)), "prompt_embeddings"),
        (variant("classifier", add_classifier), "modules_to_save"),
        (tmp_path / "missing", ADAPTER_CONFIG),
    ]
    for folder, words in cases:
        with pytest.raises(PeftError, match=words):
            import_adapter(folder, tiny_backbone)
