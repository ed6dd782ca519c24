"""The API people expect: error codes on every path, X-Request-ID and access lines, the Hugging Face
inference shape on POST /predict, and the Open Inference Protocol (KServe v2) spoken to by
tritonclient's HTTP client against a real uvicorn server."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.helpers import CLS_LABELS, ServerThread, local_client, publish_task


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone):
    """An app (keys optional on loopback) with one task of each type, its lifespan running; shared
    by the module's tests, which only read."""
    from app.config import Settings
    from app.db.session import run_migrations
    from app.main import create_app, make_hub

    tmp = tmp_path_factory.mktemp("protocols")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'hub.db'}",
        store_dir=str(tmp / "store"),
        data_dir=str(tmp / "datasets"),
        embedded_worker=False,
        max_wait_ms=2.0,
        max_inputs_per_request=8,
    )
    run_migrations(settings.database_url)
    hub = make_hub(settings, backbones=[tiny_backbone])
    app = create_app(settings, hub)
    with local_client(app) as client:
        for name, kind in [
            ("sent", "classification"),
            ("ner", "token-classification"),
            ("qa", "question-answering"),
            ("sim", "regression"),
        ]:
            publish_task(settings, hub.backbone, name, kind)
        assert hub.wait_ready(60)
        yield app, client
    hub.close()


# ------------------------------------------------------------------------------ error codes


def test_errors_carry_a_stable_code_on_every_path(served):
    app, client = served
    r = client.post("/predict/nope", json={"inputs": ["a"]})
    assert r.status_code == 404 and r.json()["code"] == "task_not_found" and "nope" in r.json()["detail"]
    r = client.post("/predict/sent", json={"inputs": ["a"], "version": 9})
    assert r.status_code == 404 and r.json()["code"] == "version_not_found"
    r = client.post("/predict/sent", json={"inputs": []})  # FastAPI's own 422
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"
    assert r.json()["detail"][0]["loc"][:2] == ["body", "inputs"]
    r = client.post("/predict/sent", json={"inputs": ["a"] * 9})  # the route's own 422
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"
    r = client.post("/predict/Bad%20Name", json={"inputs": ["a"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "task"]
    assert client.get("/no/such/route").json()["code"] == "not_found"
    assert client.get("/jobs/00000000-0000-0000-0000-000000000000").json()["code"] == "job_not_found"
    assert client.get("/tasks/ghost").json()["code"] == "task_not_found"
    r = client.delete("/predict/sent")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    # refused at the edge, before any route: a remote peer without a key, and a foreign Host
    remote = TestClient(app)
    r = remote.post("/predict/sent", json={"inputs": ["a"]})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized" and r.headers["x-request-id"]
    r = client.post("/predict/sent", json={"inputs": ["a"]}, headers={"Host": "evil.example"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    # the body-size limit of the inner layer
    r = client.post("/predict/sent", content=b"x" * (app.state.settings.max_body_bytes + 1))
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_every_code_is_documented():
    from pathlib import Path

    from app.api.errors import ERROR_CODES, STATUS_CODES

    doc = (Path(__file__).resolve().parents[2] / "docs" / "contracts.md").read_text()
    assert set(STATUS_CODES.values()) <= set(ERROR_CODES)
    missing = [c for c in ERROR_CODES if f"`{c}`" not in doc]
    assert not missing, f"codes not in docs/contracts.md: {missing}"


def test_openapi_lists_error_statuses_and_typed_shapes(served):
    _, client = served
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/predict/{task}"]["post"]
    assert {"401", "403", "404", "422", "429", "503"} <= set(op["responses"])
    assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert op["parameters"][0]["schema"]["pattern"].startswith("^[a-z0-9]")
    schemas = doc["components"]["schemas"]
    for name in ("ClassificationPrediction", "TokenClassificationPrediction", "QuestionAnsweringPrediction"):
        assert name in schemas
    train = doc["paths"]["/train"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [s["$ref"].rsplit("/", 1)[1] for s in train["oneOf"]] == ["TrainRequest", "MultiTrainRequest"]
    job = doc["paths"]["/jobs/{job_id}"]["get"]["parameters"][0]
    assert job["schema"]["pattern"].startswith("^[0-9a-f]{8}")
    for path, item in doc["paths"].items():
        for method, o in item.items():
            if path not in ("/healthz", "/v2/health/live"):
                assert any(s[0] in "45" for s in o["responses"]), (method, path)


# ------------------------------------------------------------------------------ request ids, access log


def test_request_id_is_echoed_or_made_and_every_request_is_logged(served, caplog):
    _, client = served
    caplog.set_level(logging.INFO, logger="prompthub.access")
    r = client.post("/predict/sent", json={"inputs": ["a", "b"]}, headers={"X-Request-ID": "abc-123.x:y"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123.x:y"
    bad = client.post("/predict/sent", json={"inputs": ["a"]}, headers={"X-Request-ID": "no spaces\tor tabs"})
    assert bad.headers["x-request-id"] != "no spaces\tor tabs" and len(bad.headers["x-request-id"]) == 32
    long = client.get("/healthz", headers={"X-Request-ID": "a" * 129})
    assert len(long.headers["x-request-id"]) == 32
    missing = client.post("/predict/ghost", json={"inputs": ["a"]})
    assert missing.status_code == 404 and missing.headers["x-request-id"]
    lines = [r.access for r in caplog.records if r.name == "prompthub.access"]
    first = next(x for x in lines if x["request_id"] == "abc-123.x:y")
    assert first["method"] == "POST" and first["path"] == "/predict/sent" and first["task"] == "sent"
    assert first["status"] == 200 and first["rows"] == 2 and first["latency_ms"] > 0
    err = next(x for x in lines if x["request_id"] == missing.headers["x-request-id"])
    assert err["status"] == 404 and err["task"] == "ghost" and err["rows"] == 1


def test_json_log_lines_hold_the_access_fields():
    from app.logs import JsonFormatter

    record = logging.LogRecord("prompthub.access", logging.INFO, "x", 1, "POST %s", ("/p",), None)
    record.access = {"method": "POST", "status": 200, "rows": 3, "request_id": "r1", "latency_ms": 1.5}
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "POST /p" and line["level"] == "info" and line["logger"] == "prompthub.access"
    assert line["status"] == 200 and line["rows"] == 3 and line["request_id"] == "r1"


def test_cli_version_and_usage_status(capsys):
    from app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("prompthub ")
    with pytest.raises(SystemExit) as e:
        main(["train", "--no-such-flag"])
    assert e.value.code == 2


def test_cli_missing_input_file_is_told_from_bad_data(tmp_path, capsys):
    from app.cli import main

    argv = ["train", "--task-type", "classification", "--out", str(tmp_path / "o")]
    assert main([*argv, "--train", str(tmp_path / "absent.jsonl")]) == 66
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 5, "label": "a"}\n')
    assert main([*argv, "--train", str(bad)]) == 65
    assert "line 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------ Hugging Face shape


def test_hugging_face_inputs_and_outputs(served):
    _, client = served
    native = client.post("/predict/sent", json={"inputs": ["good", {"text": "a", "text_pair": "b"}]}).json()
    assert set(native) == {"task", "version", "predictions"}  # a list without parameters: native
    assert set(native["predictions"][0]) == {"label", "score", "scores"}

    one = client.post("/predict/sent", json={"inputs": "good"}).json()
    best = max(native["predictions"][0]["scores"].items(), key=lambda kv: kv[1])
    assert one == [{"label": best[0], "score": pytest.approx(best[1])}]
    top = client.post("/predict/sent", json={"inputs": "good", "parameters": {"top_k": 2}}).json()
    assert len(top) == 2 and top[0]["score"] >= top[1]["score"]
    every = client.post("/predict/sent", json={"inputs": "good", "parameters": {"top_k": None}}).json()
    assert sorted(x["label"] for x in every) == sorted(CLS_LABELS)
    batch = client.post("/predict/sent", json={"inputs": ["a", "b"], "parameters": {}}).json()
    assert len(batch) == 2 and set(batch[0]) == {"label", "score"}  # one item per input
    batch_k = client.post("/predict/sent", json={"inputs": ["a", "b"], "parameters": {"top_k": 3}}).json()
    assert [len(x) for x in batch_k] == [3, 3]
    pair = client.post("/predict/sent", json={"inputs": {"text": "a", "text_pair": "b"}}).json()
    assert pair[0]["label"] == native["predictions"][1]["label"]

    sim = client.post("/predict/sim", json={"inputs": "a"}).json()
    assert sim[0]["label"] == "LABEL_0" and isinstance(sim[0]["score"], float)

    qa = client.post("/predict/qa", json={"inputs": {"question": "who?", "context": "Ann went home."}}).json()
    assert set(qa) == {"answer", "score", "start", "end"}

    text = "Ann Lee lives in Paris"
    words = client.post("/predict/ner", json={"inputs": text, "parameters": {"aggregation_strategy": "none"}})
    tags = client.post("/predict/ner", json={"inputs": [text]}).json()["predictions"][0]
    expected = [
        (i + 1, w, t) for i, (w, t) in enumerate(zip(tags["tokens"], tags["tags"], strict=True)) if t != "O"
    ]
    assert [(e["index"], e["word"], e["entity"]) for e in words.json()] == expected
    for e in words.json():
        assert text[e["start"] : e["end"]] == e["word"] and 0 < e["score"] <= 1
    grouped = client.post("/predict/ner", json={"inputs": text}).json()  # default: simple
    assert [(g["entity_group"], g["word"], g["start"]) for g in grouped] == [
        (e["type"], e["text"], e["start"]) for e in tags["entities"]
    ]
    first = client.post(
        "/predict/ner", json={"inputs": text, "parameters": {"aggregation_strategy": "first"}}
    )
    assert first.json() == grouped
    refused = client.post(
        "/predict/ner", json={"inputs": text, "parameters": {"aggregation_strategy": "max"}}
    )
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "parameters", "aggregation_strategy"]


def test_hugging_face_truncation_and_errors(served):
    _, client = served
    long = "word " * 400
    assert (
        client.post("/predict/sent", json={"inputs": long, "parameters": {"truncation": True}}).status_code
        == 200
    )
    r = client.post("/predict/sent", json={"inputs": long, "parameters": {"truncation": False}})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"
    assert r.json()["detail"][0]["loc"][:2] == ["body", "inputs"]
    r = client.post("/predict/qa", json={"inputs": {"question": "who?"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs", "context"]
    r = client.post("/predict/sent", json={"inputs": "a", "parameters": {"top_k": 0}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "parameters", "top_k"]
    r = client.post("/predict/sent", json={"inputs": "a", "parameters": {"nope": 1}})
    assert r.status_code == 422


# ------------------------------------------------------------------------------ KServe v2 / Triton


def test_open_inference_protocol_with_tritonclient(served):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    app, client = served
    with ServerThread(app, app.state.settings) as srv:
        tc = triton.InferenceServerClient(url=srv.base.removeprefix("http://"))
        assert tc.is_server_live() and tc.is_server_ready()
        assert tc.get_server_metadata()["name"] == "prompthub"
        meta = tc.get_model_metadata("sent")
        assert meta["name"] == "sent" and meta["versions"] == ["1"]
        assert [i["name"] for i in meta["inputs"]] == ["text", "text_pair"]
        assert tc.is_model_ready("sent") and tc.is_model_ready("sent", "1")
        assert not tc.is_model_ready("ghost")

        texts = np.array([b"good film", "très bien".encode()], dtype=np.object_)
        want = client.post("/predict/sent", json={"inputs": ["good film", "très bien"]}).json()["predictions"]
        for binary in (True, False):  # the binary tensor extension (tritonclient's default) and JSON
            text = triton.InferInput("text", [2], "BYTES")
            text.set_data_from_numpy(texts, binary_data=binary)
            outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "score", "scores")]
            res = tc.infer("sent", [text], outputs=outs, request_id="r7")
            assert res.get_response()["model_version"] == "1" and res.get_response()["id"] == "r7"
            assert [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("label")] == [
                p["label"] for p in want
            ]
            np.testing.assert_allclose(res.as_numpy("score"), [p["score"] for p in want], rtol=1e-5)
            assert res.as_numpy("scores").shape == (2, len(CLS_LABELS))
        everything = tc.infer("sent", [text], model_version="1")  # no outputs named: all, binary
        got = json.loads(everything.as_numpy("prediction")[0])
        assert got["label"] == want[0]["label"] and got["scores"] == pytest.approx(want[0]["scores"])

        q = triton.InferInput("question", [1, 1], "BYTES")
        q.set_data_from_numpy(np.array([[b"who went home?"]], dtype=np.object_))
        c = triton.InferInput("context", [1, 1], "BYTES")
        c.set_data_from_numpy(np.array([[b"Ann went home."]], dtype=np.object_))
        res = tc.infer("qa", [q, c])
        want_qa = client.post(
            "/predict/qa", json={"inputs": [{"question": "who went home?", "context": "Ann went home."}]}
        ).json()["predictions"][0]
        assert res.as_numpy("answer")[0].decode() == want_qa["answer"]
        assert int(res.as_numpy("start")[0]) == want_qa["start"]

        with pytest.raises(InferenceServerException) as info:
            tc.infer("ghost", [text])
        assert "not found" in info.value.message() and info.value.status() == "404"
        bad = triton.InferInput("texts", [2], "BYTES")
        bad.set_data_from_numpy(texts)
        with pytest.raises(InferenceServerException) as info:
            tc.infer("sent", [bad])
        assert "unknown input 'texts'" in info.value.message() and info.value.status() == "422"


def test_v2_needs_the_same_keys_and_scopes(settings_factory, hub_factory):
    from app.db import keys
    from app.main import create_app
    from tests.helpers import session_for

    settings = settings_factory(auth="required")
    hub = hub_factory(settings)
    app = create_app(settings, hub)
    with TestClient(app) as client:
        publish_task(settings, hub.backbone, "sent")
        hub.wait_ready(60)
        with session_for(settings) as s:
            predict = keys.create_key(s, name="p", scopes=["predict"], tasks=["other"])[1]
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
        assert client.get("/v2/health/live").status_code == 200  # open, like /healthz
        r = client.post("/v2/models/sent/infer", json=body)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized" and r.json()["error"]
        r = client.post("/v2/models/sent/infer", json=body, headers={"Authorization": f"Bearer {predict}"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"


def test_v2_malformed_requests_are_4xx_naming_the_place(served):
    _, client = served
    url = "/v2/models/sent/infer"
    cases = [
        (b"{not json", ["body"]),
        (json.dumps({"inputs": []}).encode(), ["body", "inputs"]),
        (
            json.dumps(
                {"inputs": [{"name": "text", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
            ).encode(),
            ["body", "inputs", 0, "datatype"],
        ),
        (
            json.dumps(
                {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}
            ).encode(),
            ["body", "inputs", 0, "shape"],
        ),
        (
            json.dumps(
                {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [5]}]}
            ).encode(),
            ["body", "inputs", 0, "data", 0],
        ),
        (
            json.dumps(
                {"inputs": [{"name": "text", "shape": [9], "datatype": "BYTES", "data": ["a"] * 9}]}
            ).encode(),
            ["body", "inputs", 0, "shape"],
        ),
    ]
    for raw, loc in cases:
        r = client.post(url, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (raw, r.text)
        assert (
            r.json()["detail"][0]["loc"] == loc and r.json()["code"] == "invalid_input" and r.json()["error"]
        )
    head = json.dumps(
        {
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 50}}
            ]
        }
    ).encode()
    r = client.post(
        url, content=head + b"\x01\x00", headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "binary_data_size"
    r = client.post(url, content=head, headers={"Inference-Header-Content-Length": "999999"})
    assert r.status_code == 422
