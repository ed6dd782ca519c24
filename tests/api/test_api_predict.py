"""POST /predict/{task} for each task type, versions, hot swap, and input errors."""

from __future__ import annotations

import math

import pytest

from app.engine.predict import predict as engine_predict
from tests.helpers import local_client, store_for

QA = {"question": "Who wrote the book?", "context": "The book was written by Jane Austen in 1813."}


def _scores(pred: dict) -> list[float]:
    return [pred["scores"][k] for k in sorted(pred["scores"])]


def test_predict_classification(client, publish, hub):
    publish("sentiment", seed=1)
    r = client.post("/predict/sentiment", json={"inputs": ["I love it", {"text": "meh", "text_pair": "ok"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "sentiment" and body["version"] == 1
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert p["label"] in ("negative", "neutral", "positive")
        assert math.isclose(sum(p["scores"].values()), 1.0, rel_tol=1e-5)
        assert p["score"] == max(p["scores"].values())
    # the same as the engine's own single-task path
    task = hub.resolve("sentiment").task
    ref = engine_predict(hub.backbone, task, [{"text": "I love it"}])[0]
    assert max(abs(a - b) for a, b in zip(_scores(ref), _scores(body["predictions"][0]), strict=True)) <= 1e-4


def test_predict_token_classification(client, publish):
    publish("ner", "token-classification", seed=2)
    text = "Ada Lovelace lives in London."
    r = client.post("/predict/ner", json={"inputs": [text, {"tokens": ["Alan", "Turing"]}]})
    assert r.status_code == 200, r.text
    first, second = r.json()["predictions"]
    assert first["tokens"] == ["Ada", "Lovelace", "lives", "in", "London", "."]
    assert len(first["tags"]) == len(first["tokens"])
    for ent in first["entities"]:
        assert text[ent["start"] : ent["end"]] == ent["text"]
    assert len(second["tags"]) == 2


def test_predict_question_answering(client, publish):
    publish("qa", "question-answering", seed=3)
    r = client.post("/predict/qa", json={"inputs": [QA]})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert set(p) >= {"answer", "start", "end", "score"}
    if p["start"] >= 0:
        assert QA["context"][p["start"] : p["end"]] == p["answer"]


def test_long_qa_context_uses_windows(client, publish):
    publish("qa", "question-answering", seed=3)
    context = " ".join(["filler words here."] * 80) + " The answer is Paris."
    r = client.post("/predict/qa", json={"inputs": [{"question": "What is the answer?", "context": context}]})
    assert r.status_code == 200, r.text


def test_unknown_task_is_404(client):
    r = client.post("/predict/nope", json={"inputs": ["x"]})
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


@pytest.mark.parametrize("name", ["Bad", "a%20b", "..", "a.b"])
def test_invalid_task_name_in_path_is_422(client, name):
    r = client.post(f"/predict/{name}", json={"inputs": ["x"]})
    assert r.status_code in (404, 422)  # ".." is normalised away by the client before routing
    if name != "..":
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["path", "task"]


def test_wrong_input_shape_names_the_field(client, publish):
    publish("qa", "question-answering")
    r = client.post("/predict/qa", json={"inputs": [QA, {"question": "where?"}]})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "inputs", 1, "context"]
    assert "inputs[1].context" in err["msg"]


def test_wrong_json_types_are_422(client, publish):
    publish("sentiment")
    assert client.post("/predict/sentiment", json={"inputs": []}).status_code == 422
    assert client.post("/predict/sentiment", json={"inputs": [3]}).status_code == 422
    r = client.post("/predict/sentiment", json={"inputs": [{"text": 5}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "inputs", 0, "text"]
    assert (
        client.post(
            "/predict/sentiment", content=b"not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )


def test_too_many_inputs(client, publish, settings):
    publish("sentiment")
    r = client.post("/predict/sentiment", json={"inputs": ["x"] * (settings.max_inputs_per_request + 1)})
    assert r.status_code == 422
    assert str(settings.max_inputs_per_request) in r.json()["detail"][0]["msg"]


def test_too_many_characters_always_refused(client, publish, settings):
    publish("sentiment")
    text = "a " * (settings.max_text_chars // 2 + 1)
    r = client.post("/predict/sentiment", json={"inputs": ["ok", text]})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "inputs", 1, "text"]
    assert str(settings.max_text_chars) in err["msg"] and "inputs[1]" in err["msg"]


def _app_client(settings_factory, hub_factory, **overrides):
    from app.main import create_app

    settings = settings_factory(**overrides)
    hub = hub_factory(settings)
    return hub, local_client(create_app(settings, hub))


def test_too_long_text_refused_in_refuse_mode(settings_factory, hub_factory):
    from tests.helpers import publish_task

    hub, client = _app_client(settings_factory, hub_factory, text_overflow="refuse")
    with client:
        publish_task(hub.settings, hub.backbone, "sentiment")
        long_text = "word " * 200  # 64 tokens is the task's max_length
        r = client.post("/predict/sentiment", json={"inputs": ["short", long_text]})
        assert r.status_code == 422
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "inputs", 1, "text"]
        assert "inputs[1]" in err["msg"] and "64" in err["msg"]
        assert client.post("/predict/sentiment", json={"inputs": ["short"]}).status_code == 200


def test_too_long_text_truncated_by_default(client, publish):
    publish("sentiment")
    r = client.post("/predict/sentiment", json={"inputs": ["word " * 500]})
    assert r.status_code == 200


def test_body_too_large_is_413(settings_factory, hub_factory):
    hub, client = _app_client(settings_factory, hub_factory, max_body_bytes=1000)
    with client:
        r = client.post("/predict/sentiment", json={"inputs": ["x" * 2000]})
        assert r.status_code == 413
        assert "1000" in r.json()["detail"]

        def chunks():  # no Content-Length: the streamed size is checked
            for _ in range(10):
                yield b'{"inputs": ["' + b"x" * 200

        r = client.post("/predict/sentiment", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_full_queue_is_429(settings_factory, hub_factory):
    from app.engine.predict import prepare
    from app.serving.batcher import Batcher
    from tests.helpers import publish_task

    hub, client = _app_client(settings_factory, hub_factory, max_queue_rows=4)
    with client:
        publish_task(hub.settings, hub.backbone, "sentiment")
        running = hub.batcher
        stalled = Batcher(hub.backbones, max_queue_rows=4)  # not started: nothing drains it
        task = hub.resolve("sentiment").task
        feats = prepare(task, hub.backbone.tokenizer, [{"text": t} for t in "abc"]).features
        pending = stalled.submit([(task, f) for f in feats])
        hub.batcher = stalled
        try:
            r = client.post("/predict/sentiment", json={"inputs": ["a", "b"]})
            assert r.status_code == 429
            assert int(r.headers["Retry-After"]) >= 1 and "full" in r.json()["detail"]
            stalled.start()
            assert len(pending.result(timeout=10)) == 3
            assert client.post("/predict/sentiment", json={"inputs": ["a", "b"]}).status_code == 200
        finally:
            hub.batcher = running
            stalled.close()
        assert 'prompthub_requests_total{route="/predict/{task}",status="429"' in client.get("/metrics").text

        publish_task(
            hub.settings, hub.backbone, "qa", "question-answering"
        )  # one request bigger than the whole queue: 422
        long_qa = {"question": "what?", "context": "many words here " * 60}
        r = client.post("/predict/qa", json={"inputs": [long_qa]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs"]
        assert (
            client.post("/predict/sentiment", json={"inputs": ["a", "b", "c", "d", "e"]}).status_code == 422
        )


def test_versions_activate_and_roll_back(client, publish):
    publish("sentiment", seed=1)
    publish("sentiment", seed=2)
    v2 = client.post("/predict/sentiment", json={"inputs": ["hello"]}).json()
    assert v2["version"] == 2
    v1 = client.post("/predict/sentiment", json={"inputs": ["hello"], "version": 1}).json()
    assert v1["version"] == 1
    assert v1["predictions"][0]["scores"] != v2["predictions"][0]["scores"]

    r = client.post("/tasks/sentiment/versions/1/activate")
    assert r.status_code == 200 and r.json()["active_version"] == 1
    after = client.post("/predict/sentiment", json={"inputs": ["hello"]}).json()
    assert after["version"] == 1 and after["predictions"] == v1["predictions"]

    client.post("/tasks/sentiment/versions/2/activate")
    again = client.post("/predict/sentiment", json={"inputs": ["hello"]}).json()
    assert again["version"] == 2 and again["predictions"] == v2["predictions"]
    assert client.post("/predict/sentiment", json={"inputs": ["x"], "version": 9}).status_code == 404


def test_new_version_is_served_at_once(client, publish):
    publish("sentiment", seed=1)
    before = client.post("/predict/sentiment", json={"inputs": ["hello"]}).json()
    publish("sentiment", seed=7)  # as the worker process would: file, then DB row
    after = client.post("/predict/sentiment", json={"inputs": ["hello"]}).json()
    assert (before["version"], after["version"]) == (1, 2)
    assert before["predictions"] != after["predictions"]


def test_checkpoint_of_another_backbone_is_409(client, hub, tokenizer):
    from transformers import BertConfig

    from app.engine.backbone import backbone_from_config
    from tests.helpers import publish_task

    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    other = backbone_from_config(cfg, tokenizer, name="other-random", seed=1)

    publish_task(hub.settings, other, "foreign")  # the other backbone, the same store and database
    r = client.post("/predict/foreign", json={"inputs": ["x"]})
    assert r.status_code == 409
    assert "other-random" in r.json()["detail"] and "tiny-bert" in r.json()["detail"]


def test_corrupt_store_file_is_500_with_a_clear_message(client, hub, publish):
    publish("sentiment")
    path = store_for(hub.settings).path("sentiment", 1)
    path.write_bytes(path.read_bytes()[:-8] + b"garbage!")
    r = client.post("/predict/sentiment", json={"inputs": ["x"]})
    assert r.status_code == 500
    assert "sha256" in r.json()["detail"]
