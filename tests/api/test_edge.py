"""The API edge (issue 12): metric labels, no work before auth, per-key limits, keyless only on
loopback connections (checked with real sockets), key expiry / bootstrap / audit, a read-only auth
path, and the reachable 500s that are 4xx now."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from starlette.testclient import TestClient

from app.db import keys
from tests.helpers import ServerThread, local_client, session_for


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured_app(settings_factory, hub_factory):
    """An app that requires keys (no auth cache), its hub and a key per scope."""
    from app.main import create_app

    def make(**overrides):
        settings = settings_factory(auth="required", auth_cache_s=0.0, **overrides)
        hub = hub_factory(settings)
        app = create_app(settings, hub)
        return app, hub

    return make


def _tokens(settings) -> dict[str, str]:
    with session_for(settings) as s:
        return {
            "admin": keys.create_key(s, name="admin", scopes=["admin"])[1],
            "predict": keys.create_key(s, name="p", scopes=["predict"])[1],
            "other": keys.create_key(s, name="q", scopes=["predict"])[1],
            "sent": keys.create_key(s, name="s", scopes=["predict"], tasks=["sent*"])[1],
        }


def _series(c: TestClient, admin: str) -> list[str]:
    text = c.get("/metrics", headers=bearer(admin)).text
    return [line.split(" ")[0] for line in text.splitlines() if line.startswith("prompthub_request")]


# ------------------------------------------------------------------------------ item 1


def test_random_task_names_add_no_metric_series(secured_app):
    app, hub = secured_app(key_rate_limit="")
    with local_client(app) as c:
        tok = _tokens(hub.settings)
        from tests.helpers import publish_task

        publish_task(hub.settings, hub.backbone, "sentiment")
        assert (
            c.post("/predict/sentiment", json={"inputs": ["x"]}, headers=bearer(tok["predict"])).status_code
            == 200
        )

        def one_of_each(i: int) -> list[int]:
            name = f"r{uuid.uuid4().hex[:12]}"
            return [
                c.post(f"/predict/{name}", json={"inputs": ["x"]}).status_code,  # 401: no key
                c.post(
                    f"/predict/{name}", json={"inputs": ["x"]}, headers=bearer(tok["predict"])
                ).status_code,
                c.post(f"/predict/{name}", json={"inputs": []}, headers=bearer(tok["predict"])).status_code,
                c.post(f"/predict/{name}", json={"inputs": ["x"]}, headers=bearer(tok["sent"])).status_code,
                c.get(f"/tasks/{name}", headers=bearer(tok["admin"])).status_code,
            ]

        assert one_of_each(0) == [401, 404, 422, 403, 404]
        before = _series(c, tok["admin"])
        statuses: dict[int, int] = {}
        for i in range(200):  # 1,000 requests on 200 random names
            for st in one_of_each(i):
                statuses[st] = statuses.get(st, 0) + 1
        after = _series(c, tok["admin"])
        assert sum(statuses.values()) == 1000 and set(statuses) == {401, 403, 404, 422}
        assert sorted(after) == sorted(before), set(after) - set(before)
        assert any('task="sentiment"' in s for s in after)  # a task that exists keeps its label
        print(
            f"\nmetric series: {len(before)} before, {len(after)} after 1000 random-name requests {statuses}"
        )


# ------------------------------------------------------------------------------ item 2


def _asgi(app, method: str, path: str, headers: dict[str, str], receive) -> tuple[int, dict, bytes]:
    """Call the app's ASGI interface directly with `receive`; (status, headers, body)."""
    out: dict = {"body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("203.0.113.7", 40000),
        "server": ("203.0.113.1", 8000),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    return out["status"], out.get("headers", {}), out["body"]


def test_no_body_is_read_before_the_key_is_checked(secured_app):
    app, hub = secured_app(unauth_body_bytes=4096)
    with local_client(app):  # lifespan: migrations
        pass
    read: list[str] = []

    async def must_not_read():
        read.append("read")
        return {"type": "http.request", "body": b"{}", "more_body": False}

    big = {"content-length": str(10_000_000)}
    for path, ctype in (
        ("/predict/sentiment", "application/json"),
        ("/train", "application/json"),
        ("/datasets", "multipart/form-data; boundary=x"),
        ("/keys", "application/json"),
    ):
        for auth in ({}, {"authorization": "Bearer ph_" + "x" * 43}, {"authorization": "Basic abc"}):
            status, headers, _ = _asgi(
                app, "POST", path, {"content-type": ctype, **big, **auth}, must_not_read
            )
            assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (path, auth)
    assert read == []
    # an open route takes no more than a few KB before authentication
    sent = [b"x" * 4096, b"x" * 4096]

    async def chunks():
        body = sent.pop(0) if sent else b""
        return {"type": "http.request", "body": body, "more_body": bool(sent)}

    status, _, body = _asgi(app, "POST", "/healthz", {"content-type": "application/json"}, chunks)
    assert status in (405, 413)  # no POST there; either way nothing past the cap is kept
    status, _, body = _asgi(app, "GET", "/healthz", {"content-length": "999999"}, must_not_read)
    assert status == 413 and b"before authentication" in body and read == []


def test_a_stalled_body_is_answered_408(secured_app):
    app, hub = secured_app(body_idle_timeout_s=0.3, body_timeout_s=5.0)
    with local_client(app):
        tok = _tokens(hub.settings)
    calls = [0]

    async def stall():
        calls[0] += 1
        if calls[0] == 1:
            return {"type": "http.request", "body": b'{"inputs": [', "more_body": True}
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    start = time.monotonic()
    status, headers, _ = _asgi(
        app,
        "POST",
        "/predict/x",
        {"content-type": "application/json", **{"authorization": f"Bearer {tok['predict']}"}},
        stall,
    )
    assert status == 408 and time.monotonic() - start < 5


def test_a_key_over_its_rate_gets_429_and_the_others_keep_going(secured_app):
    app, hub = secured_app(key_rate_limit="5/minute", key_quota="1000/day")
    with local_client(app) as c:
        tok = _tokens(hub.settings)
        a, b = bearer(tok["predict"]), bearer(tok["other"])
        assert [c.get("/tasks", headers=a).status_code for _ in range(5)] == [200] * 5
        r = c.get("/tasks", headers=a)
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert c.post("/predict/sentiment", json={"inputs": ["x"]}, headers=a).status_code == 429
        assert [c.get("/tasks", headers=b).status_code for _ in range(5)] == [200] * 5  # b: its own share
    app, hub = secured_app(key_rate_limit="", key_quota="3/day")
    with local_client(app) as c:
        tok = _tokens(hub.settings)
        codes = [c.get("/tasks", headers=bearer(tok["predict"])).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert c.get("/tasks", headers=bearer(tok["other"])).status_code == 200


def test_uvicorn_gets_connection_and_header_limits(settings_factory):
    from app.api.server import uvicorn_options

    opts = uvicorn_options(settings_factory(max_connections=77, keep_alive_s=9, header_timeout_s=3))
    assert opts["limit_concurrency"] == 77 and opts["timeout_keep_alive"] == 9
    assert opts["h11_max_incomplete_event_size"] == 64 * 1024
    assert opts["http"].__name__.startswith("HeaderTimeout")


# ------------------------------------------------------------------------------ real servers


def test_a_server_on_0_0_0_0_needs_a_key_even_from_loopback(settings_factory, hub_factory):
    from app.main import create_app

    settings = settings_factory()  # auth=auto, configured host 127.0.0.1: what `uvicorn --factory` gets
    app = create_app(settings, hub_factory(settings))
    with ServerThread(app, settings, "0.0.0.0") as srv:
        base = f"http://127.0.0.1:{srv.port}"
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.get(base + "/tasks").status_code == 401
        r = httpx.post(base + "/keys", json={"name": "x", "scopes": ["admin"]})
        assert r.status_code == 401  # no admin key minted for anyone who can reach the port
        with session_for(settings) as s:
            assert keys.list_keys(s) == []
            token = keys.create_key(s, name="a", scopes=["admin"])[1]
        assert httpx.get(base + "/tasks", headers=bearer(token)).status_code == 200


def test_a_loopback_server_is_keyless_for_loopback_hosts_and_origins_only(settings_factory, hub_factory):
    from app.main import create_app

    settings = settings_factory(header_timeout_s=1.0)
    app = create_app(settings, hub_factory(settings))
    with ServerThread(app, settings, "127.0.0.1") as srv:
        base = f"http://127.0.0.1:{srv.port}"
        assert httpx.get(base + "/tasks").status_code == 200
        assert httpx.get(base + "/tasks", headers={"Host": f"localhost:{srv.port}"}).status_code == 200
        r = httpx.get(base + "/tasks", headers={"Host": f"attacker.example:{srv.port}"})  # DNS rebinding
        assert r.status_code == 403 and "Host" in r.json()["detail"]
        ok_origin = {"Origin": f"http://localhost:{srv.port}"}
        assert httpx.get(base + "/tasks", headers=ok_origin).status_code == 200
        for origin in ("https://attacker.example", "null"):
            r = httpx.post(base + "/tasks/x/versions/1/activate", headers={"Origin": origin})
            assert r.status_code == 403, origin
        # cross-site "simple" requests: JSON sent as text/plain or without a content type is not parsed
        body = json.dumps({"name": "x", "scopes": ["admin"]})
        for ctype in ("text/plain", None):
            headers = {"Content-Type": ctype} if ctype else {}
            r = httpx.post(base + "/keys", content=body, headers=headers)
            assert r.status_code == 422, (ctype, r.text)
        with session_for(settings) as s:
            assert keys.list_keys(s) == []
        # a connection that does not send its headers in time is closed
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            start = time.monotonic()
            assert sock.recv(100) == b""  # closed by the server, no answer
            assert time.monotonic() - start < 5


# ------------------------------------------------------------------------------ item 4


def test_keys_expire(secured_app, monkeypatch, tmp_path, capsys):
    app, hub = secured_app()
    with local_client(app) as c:
        with session_for(hub.settings) as s:
            row, token = keys.create_key(s, name="short", scopes=["predict"], expires_in=timedelta(seconds=1))
            assert row.expires_at is not None
        assert c.get("/tasks", headers=bearer(token)).status_code == 200
        time.sleep(1.2)
        r = c.get("/tasks", headers=bearer(token))
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        admin = _tokens(hub.settings)["admin"]
        r = c.post(
            "/keys", json={"name": "k", "scopes": ["predict"], "expires_in": "30d"}, headers=bearer(admin)
        )
        assert r.status_code == 201 and r.json()["expires_at"]
        r = c.post(
            "/keys", json={"name": "k", "scopes": ["predict"], "expires_in": "soon"}, headers=bearer(admin)
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "expires_in"]

    from app.cli import main
    from app.config import reset_settings

    monkeypatch.setenv("PROMPTHUB_DATABASE_URL", hub.settings.database_url)
    reset_settings()
    try:
        assert (
            main(["keys", "create", "--name", "ci", "--scope", "predict", "--expires-in", "30d", "--json"])
            == 0
        )
        doc = json.loads(capsys.readouterr().out)
        from datetime import datetime

        left = datetime.fromisoformat(doc["expires_at"]) - datetime.fromisoformat(doc["created_at"])
        assert left == timedelta(days=30)
        assert main(["keys", "create", "--name", "ci", "--scope", "predict", "--expires-in", "x"]) == 2
    finally:
        reset_settings()


def test_bootstrap_admin_key_from_the_environment(settings_factory, hub_factory):
    from app.main import create_app

    token = "ph_" + "b" * 43
    settings = settings_factory(auth="required", bootstrap_admin_key=token)
    for _ in range(2):  # created on the first start, recognised on the second
        with local_client(create_app(settings, hub_factory(settings))) as c:
            assert (
                c.post("/keys", json={"name": "real", "scopes": ["admin"]}, headers=bearer(token)).status_code
                == 201
            )
    with session_for(settings) as s:
        names = sorted(k.name for k in keys.list_keys(s))
    assert names == ["bootstrap", "real", "real"]
    with pytest.raises(ValueError, match="BOOTSTRAP_ADMIN_KEY"):
        create_app(settings_factory(bootstrap_admin_key="short"))


def test_audit_lines_for_keys_activation_and_deletion(secured_app, caplog):
    from tests.helpers import publish_task

    app, hub = secured_app()
    with local_client(app) as c, caplog.at_level(logging.INFO, logger="prompthub.audit"):
        admin = _tokens(hub.settings)["admin"]
        publish_task(hub.settings, hub.backbone, "sentiment", seed=1)
        publish_task(hub.settings, hub.backbone, "sentiment", seed=2)
        new = c.post("/keys", json={"name": "n", "scopes": ["predict"]}, headers=bearer(admin)).json()
        assert c.delete(f"/keys/{new['id']}", headers=bearer(admin)).status_code == 200
        assert c.post("/tasks/sentiment/versions/1/activate", headers=bearer(admin)).status_code == 200
        assert c.delete("/tasks/sentiment", headers=bearer(admin)).status_code == 200
        assert c.delete("/tasks/sentiment", headers=bearer(admin)).status_code == 404  # not audited
    with local_client(app) as c, caplog.at_level(logging.INFO, logger="prompthub.audit"):
        publish_task(hub.settings, hub.backbone, "ner", seed=1)
        c.delete("/tasks/ner")  # keyless? no: auth=required -> 401, not audited
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "prompthub.audit"]
    events = [(d["event"], d.get("task"), d.get("key_id")) for d in lines]
    assert events == [
        ("key.create", None, new["id"]),
        ("key.revoke", None, new["id"]),
        ("version.activate", "sentiment", None),
        ("task.delete", "sentiment", None),
    ]
    assert all(d["actor"].startswith("key:") and "(admin)" in d["actor"] and d["at"] for d in lines)


def test_keyless_actor_in_audit(app, client, publish, caplog):
    publish("sentiment")
    with caplog.at_level(logging.INFO, logger="prompthub.audit"):
        assert client.delete("/tasks/sentiment").status_code == 200
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "prompthub.audit"]
    assert line["actor"] == "keyless" and line["event"] == "task.delete"


# ------------------------------------------------------------------------------ item 8


def test_auth_never_writes_so_a_read_only_database_still_serves(secured_app):
    from sqlalchemy import create_engine, event
    from sqlalchemy.orm import sessionmaker

    from app.api.auth import Authenticator
    from tests.helpers import publish_task

    app, hub = secured_app()
    with local_client(app) as c:
        tok = _tokens(hub.settings)
        publish_task(hub.settings, hub.backbone, "sentiment")
        engine = create_engine(hub.settings.database_url, connect_args={"timeout": 1})

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn, _record):
            dbapi_conn.execute(
                "PRAGMA query_only = ON"
            )  # every write fails: "attempt to write a readonly database"

        app.state.auth = Authenticator(sessionmaker(engine), 0.0)
        start = time.monotonic()
        for _ in range(3):
            r = c.post("/predict/sentiment", json={"inputs": ["x"]}, headers=bearer(tok["predict"]))
            assert r.status_code == 200, r.text
        assert time.monotonic() - start < 10
        assert app.state.auth.flush_used() is False  # best effort: fails quietly, kept for later
        engine.dispose()


# ------------------------------------------------------------------------------ item 12


def test_reachable_500s_are_422s_naming_the_field(app, client, publish):
    publish("sentiment")
    c = client
    r = c.post("/predict/sentiment", json={"inputs": ["x"], "version": 2**63})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "version"]
    r = c.post(f"/tasks/sentiment/versions/{2**63}/activate")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "version"]
    raw = {"content-type": "application/json"}
    r = c.post("/predict/sentiment", content='{"inputs": ["ok", {"text": "a\\ud800b"}]}', headers=raw)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs", 1, "text"]
    r = c.post("/keys", content='{"name": "a\\udfff", "scopes": ["predict"]}', headers=raw)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
    records = '[{"text": "a\\ud800", "label": "x"}, {"text": "b", "label": "y"}]'
    body = '{"task": "t", "task_type": "classification", "train": {"records": ' + records + "}}"
    r = c.post("/train", content=body, headers=raw)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "train", "records", 0, "text"]
    deep: object = "x"
    for _ in range(300):
        deep = {"a": deep}
    rec = [{"text": "a", "label": "pos", "meta": deep}, {"text": "b", "label": "neg"}]
    r = c.post("/train", json={"task": "t", "task_type": "classification", "train": {"records": rec}})
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"][:5] == ["body", "train", "records", 0, "meta"] and "nested deeper" in err["msg"]


def _slow_headers_closed_within(port: int, limit_s: float) -> bool:
    """Send half a request head and wait: True when the server closes the connection in time."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            return sock.recv(100) == b""
        except TimeoutError:
            return False


@pytest.mark.slow  # ~10 s: two uvicorn processes
def test_plain_uvicorn_factory_gets_the_header_timeout_from_its_protocol(
    tmp_path, sqlite_url, tiny_backbone_dir
):
    """`uvicorn --factory app.main:create_app` (no `prompthub serve`) has no header-receipt timeout of
    its own; `--http app.api.server:HeaderTimeoutProtocol` gives it PROMPTHUB_HEADER_TIMEOUT_S."""
    import subprocess
    import sys

    from app.config import Settings
    from app.db.session import REPO_ROOT
    from tests.helpers import free_port, process_env, stop_server, wait_for

    settings = Settings(
        database_url=sqlite_url,
        store_dir=str(tmp_path / "store"),
        data_dir=str(tmp_path / "data"),
        backbone=str(tiny_backbone_dir),
        embedded_worker=False,
        header_timeout_s=1.0,
    )
    env = process_env(settings)

    def serve(port: int, *extra: str) -> subprocess.Popen:
        args = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0"]
        log = open(tmp_path / f"uvicorn-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [*args, "--port", str(port), *extra], env=env, cwd=str(REPO_ROOT), stdout=log, stderr=log
        )

    def up(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    guarded_port, plain_port = free_port(), free_port()
    guarded = serve(guarded_port, "--http", "app.api.server:HeaderTimeoutProtocol")
    plain = serve(plain_port)
    try:
        wait_for(lambda: up(guarded_port) and up(plain_port), 120, "both servers")
        assert httpx.get(f"http://127.0.0.1:{guarded_port}/tasks").status_code == 401  # 0.0.0.0: keys
        start = time.monotonic()
        assert _slow_headers_closed_within(guarded_port, 5.0)
        assert time.monotonic() - start < 4
        assert not _slow_headers_closed_within(plain_port, 3.0)  # uvicorn alone waits on
    finally:
        stop_server(guarded)
        stop_server(plain)
