"""POST /train's Idempotency-Key: a retry gets the first job, another body is a 409, two racing
requests with one key make one job (SQLite and PostgreSQL), keys are per caller and expire."""

from __future__ import annotations

import threading
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from app.db import keys
from app.db.models import IdempotencyKey, Job, utcnow
from tests.helpers import ServerThread, session_for

BODY = {
    "task": "sentiment",
    "task_type": "classification",
    "train": {"records": [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}]},
}


def job_count(settings) -> int:
    with session_for(settings) as s:
        return int(s.scalar(select(func.count()).select_from(Job)))


def test_retry_with_the_same_key_returns_the_first_job(client, settings):
    first = client.post("/train", json=BODY, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == 202, first.text
    job_id = first.json()["job_id"]
    # the same body (keys in another order) again: the first job, 200, nothing queued
    again = client.post("/train", json=dict(reversed(BODY.items())), headers={"Idempotency-Key": "retry-1"})
    assert again.status_code == 200, again.text
    assert again.json() == {"job_id": job_id, "state": "queued"}
    assert again.headers["Location"] == f"/jobs/{job_id}" and again.headers["Idempotent-Replayed"] == "true"
    assert job_count(settings) == 1
    # another key: another job; no key: another job
    assert client.post("/train", json=BODY, headers={"Idempotency-Key": "retry-2"}).json()["job_id"] != job_id
    assert client.post("/train", json=BODY).status_code == 202
    assert job_count(settings) == 3


def test_same_key_other_body_is_a_409_with_a_code(client, settings):
    assert client.post("/train", json=BODY, headers={"Idempotency-Key": "k"}).status_code == 202
    other = {**BODY, "task": "other"}
    r = client.post("/train", json=other, headers={"Idempotency-Key": "k"})
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_key_reused" and "another request body" in r.json()["detail"]
    assert job_count(settings) == 1


def test_bad_keys_are_422_naming_the_header(client):
    for bad in ("has space", "x" * 256, "tab\there"):
        r = client.post("/train", json=BODY, headers={"Idempotency-Key": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_a_refused_request_records_no_key(client, settings):
    bad = {**BODY, "task": "Bad Name"}
    assert client.post("/train", json=bad, headers={"Idempotency-Key": "k1"}).status_code == 422
    # the key was not used up by the refused request: a good body with it is queued
    assert client.post("/train", json=BODY, headers={"Idempotency-Key": "k1"}).status_code == 202


def test_expired_keys_are_forgotten(client, settings):
    first = client.post("/train", json=BODY, headers={"Idempotency-Key": "old"}).json()["job_id"]
    with session_for(settings) as s:
        row = s.scalars(select(IdempotencyKey)).one()
        assert row.expires_at > utcnow() + timedelta(hours=23)  # PROMPTHUB_IDEMPOTENCY_TTL_S: a day
        s.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    r = client.post("/train", json=BODY, headers={"Idempotency-Key": "old"})
    assert r.status_code == 202 and r.json()["job_id"] != first
    with session_for(settings) as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 1


def test_keys_belong_to_their_api_key(settings_factory, hub_factory):
    from app.main import create_app

    settings = settings_factory(auth="required", auth_cache_s=0.0)
    app = create_app(settings, hub_factory(settings))
    with TestClient(app) as c:
        with session_for(settings) as s:
            a = keys.create_key(s, name="a", scopes=["train"])[1]
            b = keys.create_key(s, name="b", scopes=["train"])[1]
        ha = {"Authorization": f"Bearer {a}", "Idempotency-Key": "shared"}
        hb = {"Authorization": f"Bearer {b}", "Idempotency-Key": "shared"}
        ja = c.post("/train", json=BODY, headers=ha)
        jb = c.post("/train", json=BODY, headers=hb)
        assert ja.status_code == jb.status_code == 202
        assert ja.json()["job_id"] != jb.json()["job_id"]  # one key's retry never returns another's job
        assert c.post("/train", json=BODY, headers=ha).json()["job_id"] == ja.json()["job_id"]
        # no key at all: 401 before anything is looked up
        assert c.post("/train", json=BODY, headers={"Idempotency-Key": "shared"}).status_code == 401


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_racing_requests_with_one_key_make_one_job(backend, request, settings_factory, hub_factory):
    from app.main import create_app

    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    settings = settings_factory(database_url=url)
    app = create_app(settings, hub_factory(settings))
    n = 8
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    with ServerThread(app, settings) as srv:

        def post() -> None:
            with httpx.Client(base_url=srv.base, timeout=30) as c:
                barrier.wait()
                r = c.post("/train", json=BODY, headers={"Idempotency-Key": "race"})
            with lock:
                answers.append(r)

        threads = [threading.Thread(target=post) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(answers) == n
    assert all(r.status_code in (200, 202) for r in answers), [r.text for r in answers]
    assert len({r.json()["job_id"] for r in answers}) == 1
    assert sum(r.status_code == 202 for r in answers) == 1
    assert job_count(settings) == 1
