"""`prompthub peft import | export` against a real database and prompt store: an imported adapter is a
published task version that the hub serves with PEFT's outputs; the stored version exports back."""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest
import torch

from app.cli import main
from app.config import get_settings
from app.engine.peft import HEAD_FILE, apply_head, write_head
from tests.helpers import make_serving_task

peft = pytest.importorskip("peft")


@pytest.fixture
def cli_settings(settings, tiny_backbone_dir, monkeypatch):
    monkeypatch.setenv("PROMPTHUB_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PROMPTHUB_STORE_DIR", settings.store_dir)
    monkeypatch.setenv("PROMPTHUB_BACKBONE", str(tiny_backbone_dir))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def _peft_hidden(backbone_dir, adapter_dir, enc):
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(backbone_dir), add_pooling_layer=False).eval()
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(**enc).last_hidden_state


def test_import_publishes_a_served_version_and_export_reads_it_back(
    cli_settings, tiny_backbone, tiny_backbone_dir, tmp_path, capsys
):
    from transformers import AutoModel

    from app.engine.backbone import load_backbone
    from app.main import make_hub

    torch.manual_seed(0)
    config = peft.PrefixTuningConfig(task_type=peft.TaskType.FEATURE_EXTRACTION, num_virtual_tokens=4)
    model = peft.get_peft_model(
        AutoModel.from_pretrained(str(tiny_backbone_dir), add_pooling_layer=False), config
    )
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))
    write_head(make_serving_task(tiny_backbone, "classification", seed=9), tiny_backbone, adapter / HEAD_FILE)

    assert main(["peft", "import", str(adapter), "--task", "from-peft"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == "from-peft" and doc["version"] == 1 and doc["position_offset"] == 4

    # the CLI loaded the backbone from its folder (no pooler): the hub serves that same one
    hub = make_hub(cli_settings, backbones=[load_backbone(str(tiny_backbone_dir))])
    hub.start()
    texts = ["it works well", "a second and longer input text"]
    try:
        _, preds = asyncio.run(hub.predict("from-peft", texts))
        labels = hub.resolve("from-peft").task.spec.labels
    finally:
        hub.close()
    enc = tiny_backbone.tokenizer(texts, padding=True, return_tensors="pt")
    ref = torch.softmax(apply_head(adapter / HEAD_FILE, _peft_hidden(tiny_backbone_dir, adapter, enc)), -1)
    for p, r in zip(preds, ref, strict=True):
        assert max(abs(p["scores"][lab] - float(r[i])) for i, lab in enumerate(labels)) <= 1e-5

    out = tmp_path / "exported"
    assert main(["peft", "export", "--task", "from-peft", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    again = apply_head(out / HEAD_FILE, _peft_hidden(tiny_backbone_dir, out, enc))
    assert (torch.softmax(again, -1) - ref).abs().max().item() <= 1e-6

    # an adapter that does not fit: exit status 1 and the reason; nothing published
    (adapter / HEAD_FILE).unlink()
    assert main(["peft", "import", str(adapter), "--task", "broken"]) == 1
    assert HEAD_FILE in capsys.readouterr().err
    assert main(["peft", "export", "--task", "broken", "--out", str(tmp_path / "none")]) == 1
    assert main(["peft", "import", str(adapter), "--task", "Bad Name"]) == 2
