"""Access control: API keys (hashed, scoped, task-limited, revocable), 401 vs 403, the auth modes."""

from __future__ import annotations

import hashlib
import logging

import pytest
from starlette.testclient import TestClient

from app.db import keys
from tests.helpers import local_client, session_for

CLS_RECORDS = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}]


@pytest.fixture
def secured(settings_factory, hub_factory):
    """An app that requires keys, with one key of each kind; returns (client, tokens, hub)."""
    from app.main import create_app

    settings = settings_factory(auth="required", auth_cache_s=0.0)
    hub = hub_factory(settings)
    app = create_app(settings, hub)
    with TestClient(app) as c:
        with session_for(hub.settings) as s:
            tokens = {
                "predict": keys.create_key(s, name="p", scopes=["predict"])[1],
                "train": keys.create_key(s, name="t", scopes=["train"])[1],
                "admin": keys.create_key(s, name="a", scopes=["admin"])[1],
                "sent-only": keys.create_key(s, name="s", scopes=["predict", "train"], tasks=["sent*"])[1],
                "sent-admin": keys.create_key(s, name="sa", scopes=["admin"], tasks=["sent*"])[1],
            }
        yield c, tokens, hub


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _publish(hub, name, task_type="classification"):
    from tests.helpers import publish_task

    return publish_task(hub.settings, hub.backbone, name, task_type)


def test_missing_bad_and_revoked_keys_are_401(secured):
    c, tokens, hub = secured
    _publish(hub, "sentiment")
    body = {"inputs": ["x"]}
    r = c.post("/predict/sentiment", json=body)
    assert r.status_code == 401 and "API key is required" in r.json()["detail"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Basic abc", "Bearer", "Token ph_x", "Bearer ph_" + "x" * 43, "Bearer not-a-key"):
        r = c.post("/predict/sentiment", json=body, headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.post("/predict/sentiment", json=body, headers=bearer(tokens["predict"])).status_code == 200
    with session_for(hub.settings) as s:
        keys.revoke_key(s, keys.find_by_token(s, tokens["predict"]).id)
    r = c.post("/predict/sentiment", json=body, headers=bearer(tokens["predict"]))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_health_is_open_and_metrics_need_admin(secured):
    c, tokens, _ = secured
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    assert c.get("/openapi.json").status_code == 200
    assert c.get("/metrics").status_code == 401
    r = c.get("/metrics", headers=bearer(tokens["predict"]))
    assert r.status_code == 403 and "'admin' scope" in r.json()["detail"]
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert c.get("/metrics", headers=bearer(tokens["admin"])).status_code == 200


def test_every_route_checks_its_scope(secured):
    c, tokens, hub = secured
    _publish(hub, "sentiment")
    train = {"task": "sentiment", "task_type": "classification", "train": {"records": CLS_RECORDS}}
    calls = {
        "predict": [("POST", "/predict/sentiment", {"json": {"inputs": ["x"]}})],
        "train": [
            ("POST", "/train", {"json": train}),
            ("GET", "/jobs", {}),
            ("POST", "/datasets", {"files": {"file": ("a.jsonl", b'{"text": "a", "label": "x"}\n')}}),
        ],
        "admin": [
            ("POST", "/tasks/sentiment/versions/1/activate", {}),
            ("GET", "/keys", {}),
        ],
    }
    for scope, reqs in calls.items():
        for method, path, kw in reqs:
            assert c.request(method, path, **kw).status_code == 401, path
            for holder in ("predict", "train", "admin"):
                r = c.request(method, path, headers=bearer(tokens[holder]), **kw)
                allowed = holder == scope or holder == "admin"
                if allowed:
                    assert r.status_code < 400, (holder, path, r.text)
                else:
                    assert r.status_code == 403, (holder, path, r.text)
                    assert f"lacks the {scope!r} scope" in r.json()["detail"]
    # reading tasks: any key
    for holder in ("predict", "train", "admin"):
        assert c.get("/tasks", headers=bearer(tokens[holder])).status_code == 200
        assert c.get("/tasks/sentiment", headers=bearer(tokens[holder])).status_code == 200
    assert c.delete("/tasks/sentiment", headers=bearer(tokens["train"])).status_code == 403
    assert c.delete("/tasks/sentiment", headers=bearer(tokens["admin"])).status_code == 200


def test_task_allow_list(secured):
    c, tokens, hub = secured
    _publish(hub, "sentiment")
    _publish(hub, "ner", "token-classification")
    h = bearer(tokens["sent-only"])
    assert c.post("/predict/sentiment", json={"inputs": ["x"]}, headers=h).status_code == 200
    r = c.post("/predict/ner", json={"inputs": ["x"]}, headers=h)
    assert r.status_code == 403 and "not allowed to use task 'ner'" in r.json()["detail"]
    assert c.post("/predict/nope", json={"inputs": ["x"]}, headers=h).status_code == 403
    assert [t["name"] for t in c.get("/tasks", headers=h).json()] == ["sentiment"]
    assert c.get("/tasks/ner", headers=h).status_code == 403
    body = {"task": "ner2", "task_type": "classification", "train": {"records": CLS_RECORDS}}
    assert c.post("/train", json=body, headers=h).status_code == 403
    assert c.post("/train", json={**body, "task": "sent2", "init_from": "ner"}, headers=h).status_code == 403
    multi = {"tasks": [{**body, "task": "sent3"}, {**body, "task": "other"}]}
    assert c.post("/train", json=multi, headers=h).status_code == 403
    ok = c.post("/train", json={**body, "task": "sent2"}, headers=h)
    assert ok.status_code == 202
    other = c.post("/train", json=body, headers=bearer(tokens["admin"])).json()["job_id"]
    seen = [j["id"] for j in c.get("/jobs", headers=h).json()]
    assert seen == [ok.json()["job_id"]]
    assert c.get(f"/jobs/{other}", headers=h).status_code == 404
    assert c.post(f"/jobs/{other}/cancel", headers=h).status_code == 404
    assert c.get(f"/jobs/{other}", headers=bearer(tokens["admin"])).status_code == 200
    # an admin limited to some tasks administers those tasks only, and cannot manage keys
    ha = bearer(tokens["sent-admin"])
    assert c.post("/tasks/ner/versions/1/activate", headers=ha).status_code == 403
    assert c.post("/tasks/sentiment/versions/1/activate", headers=ha).status_code == 200
    r = c.post("/keys", json={"name": "x", "scopes": ["admin"]}, headers=ha)
    assert r.status_code == 403 and "not limited" in r.json()["detail"]


def test_keys_are_stored_hashed_and_track_last_use(secured):
    c, tokens, hub = secured
    token = tokens["predict"]
    assert token.startswith("ph_") and len(token) >= 40
    with session_for(hub.settings) as s:
        row = keys.find_by_token(s, token)
        assert row.last_used_at is None
        every = repr([(k.id, k.name, k.prefix, k.salt, k.hash, k.scopes, k.tasks) for k in keys.list_keys(s)])
        salts = {k.salt for k in keys.list_keys(s)}
    assert token not in every and token[12:] not in every  # only the 12-char prefix is kept
    assert row.prefix == token[:12] and len(salts) == len(tokens)  # a salt per key
    assert row.hash == hashlib.sha256(bytes.fromhex(row.salt) + token.encode()).hexdigest()
    c.get("/tasks", headers=bearer(token))
    assert c.app.state.auth.flush_used()  # written off the request path (issue 12 item 8)
    with session_for(hub.settings) as s:
        assert keys.find_by_token(s, token).last_used_at is not None
        assert keys.find_by_token(s, token[:-1] + ("A" if token[-1] != "A" else "B")) is None


def test_keys_over_http(secured):
    c, tokens, hub = secured
    _publish(hub, "sentiment")
    h = bearer(tokens["admin"])
    r = c.post("/keys", json={"name": "ci", "scopes": ["predict"], "tasks": ["sent*"]}, headers=h)
    assert r.status_code == 201
    created = r.json()
    assert created["token"].startswith("ph_") and created["prefix"] == created["token"][:12]
    listed = c.get("/keys", headers=h).json()
    assert created["id"] in [k["id"] for k in listed] and all("token" not in k for k in listed)
    new = bearer(created["token"])
    assert c.post("/predict/sentiment", json={"inputs": ["x"]}, headers=new).status_code == 200
    assert c.post("/keys", json={"name": "x", "scopes": ["root"]}, headers=h).status_code == 422
    assert (
        c.post("/keys", json={"name": "x", "scopes": ["predict"], "tasks": ["a/b"]}, headers=h).status_code
        == 422
    )
    r = c.delete(f"/keys/{created['prefix']}", headers=h)
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert c.post("/predict/sentiment", json={"inputs": ["x"]}, headers=new).status_code == 401
    assert c.delete("/keys/nope", headers=h).status_code == 404


def test_revocation_through_the_api_is_immediate_despite_the_cache(settings_factory, hub_factory):
    from app.main import create_app

    settings = settings_factory(auth="required", auth_cache_s=300.0)
    hub = hub_factory(settings)
    with TestClient(create_app(settings, hub)) as c:
        with session_for(hub.settings) as s:
            admin = keys.create_key(s, name="a", scopes=["admin"])[1]
            user = keys.create_key(s, name="u", scopes=["predict"])
        assert c.get("/tasks", headers=bearer(user[1])).status_code == 200  # cached now
        assert c.delete(f"/keys/{user[0].id}", headers=bearer(admin)).status_code == 200
        assert c.get("/tasks", headers=bearer(user[1])).status_code == 401


def test_auth_modes(settings_factory, hub_factory, caplog):
    from app.main import create_app

    loop = settings_factory()  # auth=auto on 127.0.0.1
    assert not loop.keys_required
    hub = hub_factory(loop)
    with caplog.at_level(logging.WARNING, logger="app.main"):
        with local_client(create_app(loop, hub)) as c:
            assert c.get("/tasks").status_code == 200  # no key needed on loopback
            assert c.get("/metrics").status_code == 200
            r = c.get("/tasks", headers=bearer("ph_" + "z" * 43))  # a key sent is still checked
            assert r.status_code == 401
    assert "API keys required except on connections from loopback to a loopback socket" in caplog.text

    for host in ("localhost", "::1", "127.0.0.1"):
        assert not settings_factory(host=host).keys_required
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com"):
        s = settings_factory(host=host)
        assert s.keys_required
        with local_client(create_app(s, hub_factory(s))) as c:
            assert c.get("/tasks").status_code == 401
            assert c.get("/healthz").status_code == 200
        with pytest.raises(ValueError, match="PROMPTHUB_AUTH=off is not allowed"):
            create_app(settings_factory(host=host, auth="off"))
    assert settings_factory(auth="required").keys_required
    assert not settings_factory(auth="off").keys_required


def test_serve_refuses_auth_off_on_a_public_address(monkeypatch, tmp_path, capsys):
    import argparse

    from app.api.server import serve_command
    from app.config import reset_settings

    monkeypatch.setenv("PROMPTHUB_AUTH", "off")
    monkeypatch.setenv("PROMPTHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    reset_settings()
    try:
        code = serve_command(argparse.Namespace(host="0.0.0.0", port=1, no_worker=True))
    finally:
        reset_settings()
    assert code == 2 and "PROMPTHUB_AUTH=off is not allowed" in capsys.readouterr().err


def test_keys_cli(monkeypatch, tmp_path, capsys, settings_factory, hub_factory):
    import json

    from app.cli import main
    from app.config import reset_settings
    from app.main import create_app

    url = f"sqlite:///{tmp_path / 'prompthub.db'}"
    monkeypatch.setenv("PROMPTHUB_DATABASE_URL", url)
    reset_settings()
    try:
        assert main(["keys", "create", "--name", "ops", "--scope", "predict", "--scope", "train"]) == 0
        token = capsys.readouterr().out.strip()
        assert main(["keys", "create", "--name", "ci", "--scope", "admin", "--task", "sent*", "--json"]) == 0
        ci = json.loads(capsys.readouterr().out)
        assert ci["tasks"] == ["sent*"] and ci["token"].startswith("ph_")
        assert main(["keys", "list"]) == 0
        out = capsys.readouterr().out
        assert "ops" in out and "ci" in out and token not in out and ci["token"] not in out
        assert main(["keys", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert {k["name"] for k in listed} == {"ops", "ci"} and all("token" not in k for k in listed)
        ops_id = next(k["id"] for k in listed if k["name"] == "ops")

        settings = settings_factory(auth="required", auth_cache_s=0.0)
        assert settings.database_url == url
        with TestClient(create_app(settings, hub_factory(settings))) as c:
            assert c.get("/jobs", headers=bearer(token)).status_code == 200
            assert main(["keys", "revoke", ops_id]) == 0
            assert "revoked" in capsys.readouterr().out
            assert c.get("/jobs", headers=bearer(token)).status_code == 401
        assert main(["keys", "revoke", "nope"]) == 1
        assert main(["keys", "create", "--name", "x", "--scope", "predict", "--task", "A B"]) == 2
    finally:
        reset_settings()
