"""The regression task type through REST: POST /train, the worker, POST /predict, GET /tasks."""

from __future__ import annotations

PAIRS = [
    {"text": "a man is playing a guitar", "text_pair": "a man plays the guitar", "score": 4.8},
    {"text": "a woman is slicing an onion", "text_pair": "someone cuts an onion", "score": 4.2},
    {"text": "a dog runs in the park", "text_pair": "a cat sleeps on the sofa", "score": 0.6},
    {"text": "the stock market fell today", "text_pair": "a child rides a bicycle", "score": 0.1},
    {"text": "two kids play football", "text_pair": "children are playing soccer", "score": 4.5},
    {"text": "a plane is taking off", "text_pair": "an airplane departs", "score": 4.9},
    {"text": "he is cooking pasta", "text_pair": "the river is frozen", "score": 0.0},
    {"text": "she reads a book", "text_pair": "a woman is reading", "score": 3.8},
]


def test_regression_trains_and_serves_through_rest(client, settings, tiny_backbone, publish):
    from app.jobs.worker import Worker

    body = {
        "task": "similarity",
        "task_type": "regression",
        "train": {"records": PAIRS},
        "eval": {"records": PAIRS[:4]},
        "hyperparameters": {"epochs": 2, "batch_size": 4, "prefix_length": 4, "max_length": 32},
    }
    r = client.post("/train", json=body)
    assert r.status_code == 202, r.text
    assert Worker(settings, backbone=tiny_backbone).run_once()
    job = client.get(r.headers["Location"]).json()
    assert job["state"] == "succeeded", job
    assert job["result"] == {"similarity": 1}
    assert {"pearson", "spearman", "mse"} <= set(job["metrics"])

    detail = client.get("/tasks/similarity").json()
    assert detail["task_type"] == "regression" and detail["labels"] == [] and detail["active_version"] == 1

    # served in the same batches as the other task types
    publish("sentiment")
    inputs = [{"text": "a man sings", "text_pair": "someone is singing"}, "a lone sentence"]
    r = client.post("/predict/similarity", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2 and all(set(p) == {"score"} and isinstance(p["score"], float) for p in preds)
    assert client.post("/predict/sentiment", json={"inputs": ["fine"]}).status_code == 200


def test_regression_records_are_checked_at_the_edge(client):
    bad = [dict(PAIRS[0]), {"text": "no score here", "text_pair": "x"}]
    r = client.post(
        "/train", json={"task": "similarity", "task_type": "regression", "train": {"records": bad}}
    )
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "train", "records", 1, "score"], err

    labelled = {"task": "similarity", "task_type": "regression", "train": {"records": PAIRS}, "labels": ["a"]}
    r = client.post("/train", json=labelled)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "labels"], r.text
