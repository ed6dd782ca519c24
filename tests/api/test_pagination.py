"""Cursor pages and filters on GET /tasks, /jobs and /datasets: the body stays a list, the next
page's cursor comes in X-Next-Cursor and Link; stable order, no repeats or gaps while rows are
added between pages; limit and cursor checked with a 422 naming the field."""

from __future__ import annotations

import pytest

from app.db import jobs as db_jobs
from tests.helpers import jsonl, session_for


def pages(client, path: str, **params) -> tuple[list[list[dict]], list[str]]:
    out, cursors = [], []
    cursor = None
    while True:
        q = dict(params, **({"cursor": cursor} if cursor else {}))
        r = client.get(path, params=q)
        assert r.status_code == 200, r.text
        out.append(r.json())
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in r.headers
            return out, cursors
        cursors.append(cursor)
        assert r.headers["Link"].endswith('>; rel="next"') and f"cursor={cursor}" in r.headers["Link"]


def test_tasks_pages_and_filters(client, publish):
    names = [f"t{i:02d}" for i in range(7)]
    for n in names:
        publish(n)
    publish("ner-a", "token-classification")
    got, _ = pages(client, "/tasks", limit=3)
    assert [len(p) for p in got] == [3, 3, 2]
    assert [t["name"] for p in got for t in p] == sorted([*names, "ner-a"])
    # filters
    assert [t["name"] for t in client.get("/tasks?task_type=token-classification").json()] == ["ner-a"]
    prefix, _ = pages(client, "/tasks", name_prefix="t0", limit=5)
    assert [t["name"] for p in prefix for t in p] == names
    # LIKE wildcards in a prefix are literal
    assert client.get("/tasks", params={"name_prefix": "t%"}).json() == []
    assert client.get("/tasks", params={"name_prefix": "t_"}).json() == []
    # the default page holds everything here, the old list shape
    assert len(client.get("/tasks").json()) == 8


def test_tasks_added_between_pages_neither_repeat_nor_vanish(client, publish):
    for n in ("b", "d", "f", "h"):
        publish(n)
    r = client.get("/tasks?limit=2")
    first = [t["name"] for t in r.json()]
    assert first == ["b", "d"]
    publish("a")  # before the cursor: not shown on later pages (it was not there for page 1)
    publish("e")  # after it: shown where it sorts
    cursor = r.headers["X-Next-Cursor"]
    seen = list(first)
    while cursor:
        r = client.get("/tasks", params={"limit": 2, "cursor": cursor})
        seen += [t["name"] for t in r.json()]
        cursor = r.headers.get("X-Next-Cursor")
    assert seen == ["b", "d", "e", "f", "h"]


def test_jobs_pages_newest_first_with_filters(client, settings, publish):
    body = {
        "task": "sent",
        "task_type": "classification",
        "train": {"records": [{"text": "good", "label": "p"}, {"text": "bad", "label": "n"}]},
    }
    ids = []
    for i in range(5):
        r = client.post("/train", json={**body, "task": f"sent{i % 2}"})
        assert r.status_code == 202
        ids.append(r.json()["job_id"])
    got, cursors = pages(client, "/jobs", limit=2)
    flat = [j["id"] for p in got for j in p]
    assert flat == list(reversed(ids)) and len(cursors) == 2
    # jobs queued between pages come first in time order, so they sort before any cursor
    r = client.get("/jobs?limit=2")
    more = client.post("/train", json=body).json()["job_id"]
    seen = [j["id"] for j in r.json()]
    cursor = r.headers["X-Next-Cursor"]
    while cursor:
        r = client.get("/jobs", params={"limit": 2, "cursor": cursor})
        seen += [j["id"] for j in r.json()]
        cursor = r.headers.get("X-Next-Cursor")
    assert seen == list(reversed(ids)) and more not in seen
    # filters: task, state (with paging)
    sent1, _ = pages(client, "/jobs", task="sent1", limit=1)
    assert [j["id"] for p in sent1 for j in p] == [ids[3], ids[1]]
    with session_for(settings) as s:
        db_jobs.request_cancel(s, ids[0])
    assert [j["id"] for j in client.get("/jobs?state=cancelled").json()] == [ids[0]]
    assert len(client.get("/jobs?state=queued").json()) == 5


def test_datasets_pages_and_filters(client):
    ids = []
    for i in range(5):
        data = jsonl({"text": "good", "label": "p"}, {"text": "bad", "label": "n"})
        files = {"file": (f"{'a' if i < 3 else 'b'}-{i}.jsonl", data, "application/jsonl")}
        form = {"task_type": "classification"} if i % 2 else {}
        r = client.post("/datasets", files=files, data=form)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    got, _ = pages(client, "/datasets", limit=2)
    assert [d["id"] for p in got for d in p] == ids  # oldest first
    only_a, _ = pages(client, "/datasets", filename_prefix="a-", limit=2)
    assert [d["id"] for p in only_a for d in p] == ids[:3]
    typed = client.get("/datasets?task_type=classification").json()
    assert [d["id"] for d in typed] == [ids[1], ids[3]]
    # an upload between pages comes after every cursor handed out: on the last page
    r = client.get("/datasets?limit=3")
    files = {"file": ("late.jsonl", jsonl({"text": "x", "label": "p"}), "application/jsonl")}
    late = client.post("/datasets", files=files).json()["id"]
    rest = client.get("/datasets", params={"limit": 10, "cursor": r.headers["X-Next-Cursor"]}).json()
    assert [d["id"] for d in r.json() + rest] == [*ids, late]


@pytest.mark.parametrize("path", ["/tasks", "/jobs", "/datasets"])
def test_limit_and_cursor_are_checked(client, path):
    for bad in ("0", "1001", "-1", "x"):
        r = client.get(path, params={"limit": bad})
        assert r.status_code == 422, (path, bad)
        assert r.json()["detail"][0]["loc"] == ["query", "limit"]
    for bad in ("!!!", "bm90LWpzb24", "W10", "x" * 600, "WzFd"):  # garbage, "not-json", [], long, [1]
        r = client.get(path, params={"cursor": bad})
        assert r.status_code == 422, (path, bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert client.get(path, params={"limit": 1000}).status_code == 200


def test_a_key_limited_to_some_tasks_pages_through_its_own(settings_factory, hub_factory):
    from starlette.testclient import TestClient

    from app.db import keys
    from app.main import create_app
    from tests.helpers import publish_task

    settings = settings_factory(auth="required", auth_cache_s=0.0)
    hub = hub_factory(settings)
    for n in ("a1", "b1", "b2", "c1", "b3", "d1", "b4"):
        publish_task(settings, hub.backbone, n)
    with TestClient(create_app(settings, hub)) as c:
        with session_for(settings) as s:
            token = keys.create_key(s, name="b", scopes=["predict"], tasks=["b*"])[1]
        c.headers["Authorization"] = f"Bearer {token}"
        got, _ = pages(c, "/tasks", limit=2)
        assert [t["name"] for p in got for t in p] == ["b1", "b2", "b3", "b4"]
