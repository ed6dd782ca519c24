"""GET/POST /tasks/{task}/peft: a version downloaded as a PEFT adapter loads in PEFT with the task's
outputs, uploaded back it is a new version that predicts the same; admin scope; errors name the file."""

from __future__ import annotations

import io
import warnings
import zipfile

import pytest
import torch
from starlette.testclient import TestClient

from app.engine.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_FILE, apply_head

peft = pytest.importorskip("peft")


def _files(zip_bytes: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _upload(files: dict[str, bytes]) -> dict:
    return {
        "adapter_config": (ADAPTER_CONFIG, files[ADAPTER_CONFIG], "application/json"),
        "adapter_model": (ADAPTER_WEIGHTS, files[ADAPTER_WEIGHTS], "application/octet-stream"),
        "head": (HEAD_FILE, files[HEAD_FILE], "application/octet-stream"),
    }


def test_download_loads_in_peft_and_upload_serves_the_same(client, publish, hub, tiny_backbone_dir, tmp_path):
    from transformers import AutoModel

    publish("sentiment", seed=3)
    r = client.get("/tasks/sentiment/peft")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip" and r.headers["X-PromptHub-Version"] == "1"
    files = _files(r.content)
    assert set(files) == {ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_FILE}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    base = AutoModel.from_pretrained(str(tiny_backbone_dir), add_pooling_layer=False).eval()
    model = peft.PeftModel.from_pretrained(base, str(tmp_path)).eval()
    texts = ["a fine day", "it rained all week long"]
    enc = hub.backbone.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = torch.softmax(apply_head(tmp_path / HEAD_FILE, model(**enc).last_hidden_state), -1)
    served = client.post("/predict/sentiment", json={"inputs": texts}).json()["predictions"]
    labels = hub.resolve("sentiment").task.spec.labels
    for pred, row in zip(served, probs, strict=True):
        assert max(abs(pred["scores"][lab] - float(row[i])) for i, lab in enumerate(labels)) <= 1e-5

    r = client.post("/tasks/copy/peft", files=_upload(files))
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["position_offset"] == 0
    again = client.post("/predict/copy", json={"inputs": texts}).json()["predictions"]
    for a, b in zip(served, again, strict=True):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= 1e-6
    r = client.post("/tasks/copy/peft", files=_upload(files), data={"activate": "false"})
    assert r.status_code == 201 and r.json()["version"] == 2
    assert client.get("/tasks/copy").json()["active_version"] == 1


def test_errors_name_the_file_or_say_why(client, publish):
    publish("sentiment", seed=3)
    publish("partial", seed=4, layers="0-1")
    files = _files(client.get("/tasks/sentiment/peft").content)
    bad = dict(files, **{ADAPTER_CONFIG: b'{"peft_type": "LORA"}'})
    r = client.post("/tasks/x/peft", files=_upload(bad))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "adapter_config"], r.text
    bad = dict(files, **{HEAD_FILE: b"not safetensors"})
    r = client.post("/tasks/x/peft", files=_upload(bad))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "head"], r.text
    up = _upload(files)
    del up["head"]
    r = client.post("/tasks/x/peft", files=up)
    assert r.status_code == 422 and any(e["loc"] == ["body", "head"] for e in r.json()["detail"])
    r = client.get("/tasks/partial/peft")
    assert r.status_code == 409 and "layers" in r.json()["detail"]
    assert client.get("/tasks/nope/peft").status_code == 404
    assert client.get("/tasks/sentiment/peft?version=7").status_code == 404


def test_peft_routes_need_admin(settings_factory, hub_factory):
    from app.db import keys
    from app.main import create_app
    from tests.helpers import publish_task, session_for

    settings = settings_factory(auth="required", auth_cache_s=0.0)
    hub = hub_factory(settings)
    with TestClient(create_app(settings, hub)) as c:
        publish_task(settings, hub.backbone, "sentiment", seed=1)
        with session_for(settings) as s:
            predict = keys.create_key(s, name="p", scopes=["predict", "train"])[1]
            admin = keys.create_key(s, name="a", scopes=["admin"])[1]
        assert c.get("/tasks/sentiment/peft").status_code == 401
        assert (
            c.get("/tasks/sentiment/peft", headers={"Authorization": f"Bearer {predict}"}).status_code == 403
        )
        r = c.get("/tasks/sentiment/peft", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200
        files = _files(r.content)
        headers = {"Authorization": f"Bearer {predict}"}
        assert c.post("/tasks/other/peft", files=_upload(files), headers=headers).status_code == 403
