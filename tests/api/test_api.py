"""Tasks, jobs, training requests, dataset uploads, health and metrics."""

from __future__ import annotations

import io
import json

import pytest

from tests.helpers import local_client, session_for, store_for

CLS_RECORDS = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}]


def _train_body(**kw):
    body = {"task": "sentiment", "task_type": "classification", "train": {"records": CLS_RECORDS}}
    body.update(kw)
    return body


# ------------------------------------------------------------------------- health and metrics
def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["backbone"] == "tiny-bert"


def test_readyz_is_503_until_the_backbone_is_loaded(settings):
    from app.main import create_app, make_hub

    hub = make_hub(settings)  # nothing loaded, not started

    c = local_client(create_app(settings, hub))  # no lifespan: never loads
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 503
    r = c.post("/predict/sentiment", json={"inputs": ["x"]})
    assert r.status_code == 503 and "Retry-After" in r.headers
    hub.load_error = "BackboneError: boom"
    r = c.get("/readyz")
    assert r.status_code == 503 and "boom" in r.json()["error"]


def test_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict/{task}", "/train", "/jobs", "/jobs/{job_id}", "/tasks/{task}", "/datasets"} <= set(
        paths
    )


def test_metrics(client, publish):
    publish("sentiment")
    client.post("/predict/sentiment", json={"inputs": ["a", "b"]})
    client.post("/predict/sentiment", json={"inputs": ["c"]})
    client.post("/predict/nope", json={"inputs": ["c"]})
    client.post("/train", json=_train_body())
    text = client.get("/metrics").text
    assert 'prompthub_requests_total{route="/predict/{task}",status="200",task="sentiment"} 2.0' in text
    assert 'route="/predict/{task}",status="404",task="_unknown"' in text
    assert "prompthub_request_latency_seconds_bucket" in text
    # the mean latency per task: a count and a sum per task and route
    assert (
        'prompthub_task_request_latency_seconds_count{route="/predict/{task}",task="sentiment"} 2.0' in text
    )
    assert 'prompthub_task_request_latency_seconds_sum{route="/predict/{task}",task="sentiment"}' in text
    assert "prompthub_batch_size_bucket" in text
    assert "prompthub_queue_rows 0.0" in text
    assert "prompthub_cache_hits_total 1.0" in text and "prompthub_cache_misses_total 1.0" in text
    assert 'prompthub_jobs{state="queued"} 1.0' in text


# ------------------------------------------------------------------------- tasks
def test_tasks_list_detail_activate_delete(client, publish, hub):
    publish("sentiment", seed=1)
    publish("sentiment", seed=2)
    publish("ner", "token-classification")
    tasks = client.get("/tasks").json()
    assert [t["name"] for t in tasks] == ["ner", "sentiment"]
    d = client.get("/tasks/sentiment").json()
    assert d["task_type"] == "classification" and d["active_version"] == 2
    assert [v["version"] for v in d["versions"]] == [1, 2]
    assert [v["active"] for v in d["versions"]] == [False, True]
    assert d["versions"][0]["metrics"] == {"seed": 1} and d["versions"][0]["spec"]["prefix_length"] == 4
    assert client.post("/tasks/sentiment/versions/1/activate").json()["active_version"] == 1
    assert client.post("/tasks/sentiment/versions/5/activate").status_code == 404
    assert client.post("/tasks/nope/versions/1/activate").status_code == 404
    assert client.get("/tasks/nope").status_code == 404
    assert client.get("/tasks/Bad..Name").status_code == 422

    assert client.post("/predict/sentiment", json={"inputs": ["x"]}).status_code == 200
    r = client.delete("/tasks/sentiment")
    assert r.status_code == 200 and r.json()["versions"] == 2
    assert client.get("/tasks/sentiment").status_code == 404
    assert client.post("/predict/sentiment", json={"inputs": ["x"]}).status_code == 404
    assert not (store_for(hub.settings).root / "sentiment").exists()
    assert client.delete("/tasks/sentiment").status_code == 404


# ------------------------------------------------------------------------- train and jobs
def test_train_queues_a_job(client):
    r = client.post("/train", json=_train_body(hyperparameters={"epochs": 2, "max_steps": 5}))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["state"] == "queued" and r.headers["Location"] == f"/jobs/{job_id}"
    job = client.get(f"/jobs/{job_id}").json()
    assert job["kind"] == "single" and job["task_names"] == ["sentiment"]
    assert [j["id"] for j in client.get("/jobs").json()] == [job_id]
    assert client.get("/jobs?state=running").json() == []
    assert client.get("/jobs?state=bogus").status_code == 422
    c = client.post(f"/jobs/{job_id}/cancel").json()
    assert c["state"] == "cancelled" and c["cancel_requested"] is True
    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/jobs/nope/cancel").status_code == 404


def test_train_payload_is_what_the_worker_reads(client, hub):
    from app.db import jobs as db_jobs

    r = client.post("/train", json=_train_body(labels=["neg", "pos"], init_from=None))
    with session_for(hub.settings) as s:
        payload = db_jobs.get_job(s, r.json()["job_id"]).payload
    # inline records are stored parsed: the worker rebuilds the examples without parsing them again
    parsed = [{"text": r["text"], "text_pair": None, "label": r["label"]} for r in CLS_RECORDS]
    assert payload["task"] == "sentiment" and payload["train"] == {"examples": parsed}
    assert payload["eval"] is None and payload["labels"] == ["neg", "pos"]
    assert set(payload["hyperparameters"]) >= {
        "method",
        "prefix_length",
        "reparameterize",
        "layers",
        "head",
        "label_words",
        "lr",
        "epochs",
        "batch_size",
        "max_length",
        "doc_stride",
        "seed",
        "max_steps",
    }


def test_multitask_train(client):
    body = {
        "tasks": [
            {"task": "sentiment", "task_type": "classification", "train": {"records": CLS_RECORDS}},
            {
                "task": "ner",
                "task_type": "token-classification",
                "train": {"records": [{"tokens": ["Ada", "ran"], "tags": ["B-PER", "O"]}]},
            },
        ],
        "per_task_epochs": 1,
    }
    r = client.post("/train", json=body)
    assert r.status_code == 202, r.text
    job = client.get(f"/jobs/{r.json()['job_id']}").json()
    assert job["kind"] == "multitask" and job["task_names"] == ["sentiment", "ner"]
    body["tasks"][1]["train"]["records"][0]["tags"] = ["B-PER"]
    r = client.post("/train", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "tasks", 1, "train", "records", 0, "tags"]
    body["tasks"][1]["task"] = "sentiment"
    assert client.post("/train", json=body).status_code == 422


def test_bad_training_line_is_named(client):
    records = [*CLS_RECORDS, {"text": "no label here"}, {"text": "fine", "label": "pos"}]
    r = client.post("/train", json=_train_body(train={"records": records}))
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "train", "records", 2, "label"]
    assert "line 3" in err["msg"]
    r = client.post("/train", json=_train_body(eval={"records": [{"label": "pos"}]}))
    assert r.json()["detail"][0]["loc"] == ["body", "eval", "records", 0, "text"]
    r = client.post("/train", json=_train_body(labels=["pos"]))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "train", "records", 1, "label"]


@pytest.mark.parametrize("name", ["../etc", "Upper", "a b", "", "x" * 65, "-lead"])
def test_invalid_task_names(client, name):
    r = client.post("/train", json=_train_body(task=name))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "task"]


@pytest.mark.parametrize(
    "hp, field",
    [
        ({"prefix_length": 0}, "prefix_length"),
        ({"lr": -1}, "lr"),
        ({"epochs": 1000}, "epochs"),
        ({"max_length": 4}, "max_length"),
        ({"method": "magic"}, "method"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_hyperparameter_ranges(client, hp, field):
    r = client.post("/train", json=_train_body(hyperparameters=hp))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:3] == ["body", "hyperparameters", field]


def test_train_references_must_exist(client, publish):
    r = client.post("/train", json=_train_body(train={"dataset_id": "missing"}))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "train", "dataset_id"]
    r = client.post("/train", json=_train_body(init_from="ghost"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "init_from"]
    publish("ner", "token-classification")
    r = client.post("/train", json=_train_body(task="ner"))  # exists with another task type
    assert r.status_code == 409
    r = client.post("/train", json=_train_body(task_type="summarization"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "task_type"]


def test_too_many_jobs_is_429(settings_factory, hub_factory):
    from app.main import create_app

    settings = settings_factory(max_queued_jobs=1)
    with local_client(create_app(settings, hub_factory(settings))) as c:
        assert c.post("/train", json=_train_body()).status_code == 202
        r = c.post("/train", json=_train_body())
        assert r.status_code == 429 and "Retry-After" in r.headers


# ------------------------------------------------------------------------- datasets
def _upload(client, name: str, data: bytes, task_type: str | None = None):
    form = {"task_type": task_type} if task_type else {}
    return client.post("/datasets", files={"file": (name, io.BytesIO(data))}, data=form)


def test_upload_jsonl_and_train_from_it(client, settings):
    data = b'{"text": "good", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n'
    r = _upload(client, "reviews.jsonl", data, "classification")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["rows"] == 2 and ds["columns"] == ["text", "label"] and ds["filename"] == "reviews.jsonl"
    import hashlib
    from pathlib import Path

    assert ds["sha256"] == hashlib.sha256(data).hexdigest()
    assert (Path(settings.data_dir) / f"{ds['sha256']}.jsonl").read_bytes() == data
    r = client.post("/train", json=_train_body(train={"dataset_id": ds["id"]}))
    assert r.status_code == 202
    r = client.post(
        "/train", json=_train_body(task_type="question-answering", train={"dataset_id": ds["id"]})
    )
    assert r.status_code == 422


def test_upload_jsonl_with_unicode_line_separators_inside_strings(client):
    # U+2028, U+2029 and U+0085 are valid inside JSON strings; JSONL lines end at "\n" only
    records = [{"text": f"one{sep}record", "label": "pos"} for sep in ("\u2028", "\u2029", "\u0085")]
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode() + b"\n"
    for task_type in (None, "classification"):
        r = _upload(client, "seps.jsonl", data, task_type)
        assert r.status_code == 201, r.text
        assert r.json()["rows"] == 3


def test_upload_csv_without_task_type(client):
    r = _upload(client, "d.csv", b'text,label\nhello,pos\n"a, b",neg\n')
    assert r.status_code == 201 and r.json()["rows"] == 2 and r.json()["columns"] == ["text", "label"]
    r = _upload(client, "d.csv", b"text,label\nhello,pos,extra\n")
    assert r.status_code == 422 and "line 2" in r.json()["detail"][0]["msg"]


def test_upload_errors(client):
    r = _upload(client, "d.jsonl", b'{"text": "ok", "label": "a"}\n{"text": "x"}\n', "classification")
    assert r.status_code == 422 and "line 2" in r.json()["detail"][0]["msg"]
    assert "label" in r.json()["detail"][0]["msg"]
    r = _upload(client, "d.jsonl", b'{"text": "ok"}\n{not json\n')
    assert r.status_code == 422 and "line 2" in r.json()["detail"][0]["msg"]
    assert _upload(client, "d.exe", b"MZ").status_code == 422
    assert _upload(client, "d.jsonl", b"").status_code == 422
    assert _upload(client, "d.jsonl", b'{"a": 1}\n', "summarization").status_code == 422


def test_upload_limits(settings_factory, hub_factory):
    from app.main import create_app

    settings = settings_factory(max_upload_bytes=2000, max_dataset_rows=3)
    with local_client(create_app(settings, hub_factory(settings))) as c:
        big = b'{"text": "x", "label": "a"}\n' * 100
        r = _upload(c, "big.jsonl", big, "classification")
        assert r.status_code == 413 and "2000" in r.json()["detail"]
        r = _upload(c, "huge.jsonl", big * 40, "classification")  # refused on Content-Length, unread
        assert r.status_code == 413
        rows = b'{"text": "x", "label": "a"}\n' * 4
        r = _upload(c, "rows.jsonl", rows, "classification")
        assert r.status_code == 422 and "3" in r.json()["detail"][0]["msg"]
        r = _upload(c, "rows.jsonl", rows)
        assert r.status_code == 422 and "3" in r.json()["detail"][0]["msg"]
        assert _upload(c, "ok.jsonl", rows[: len(rows) // 2], "classification").status_code == 201
