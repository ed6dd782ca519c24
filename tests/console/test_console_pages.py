"""The console at /ui and the API docs at /docs and /redoc are served from the package: no page
refers to an asset on another host, so they render on a machine without internet."""

from __future__ import annotations

import re

import pytest

from tests.helpers import jsonl

URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""", re.I)
ABSOLUTE = re.compile(r"""https?://[^\s"'<>)]+""", re.I)


def _asset_refs(text: str) -> list[str]:
    return [a or b for a, b in URL.findall(text)]


def _external(text: str) -> list[str]:
    """http(s):// asset references and absolute URLs (links to the app itself are relative)."""
    return [u for u in _asset_refs(text) if u.startswith(("http:", "https:", "//"))] + ABSOLUTE.findall(text)


@pytest.mark.parametrize("path", ["/ui", "/docs", "/redoc"])
def test_pages_use_no_external_url(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert _external(r.text) == []
    assert "default-src 'self'" in r.headers["content-security-policy"]  # nothing else is fetched either
    refs = [u for u in _asset_refs(r.text) if not u.startswith("#")]
    assert refs, "the page loads its script and styles"
    for ref in refs:
        if ref.startswith("/") and not ref.startswith(("/docs", "/metrics", "/openapi.json")):
            assert client.get(ref).status_code == 200, ref
        if ref.startswith("/docs/assets/"):
            asset = client.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 1000, ref


def test_console_files_are_served_and_self_contained(client):
    for name, kind in (("console.js", "javascript"), ("console.css", "css")):
        r = client.get(f"/ui/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert ABSOLUTE.findall(r.text) == [], name  # no CDN, no font service
    assert client.get("/ui/static/../routes/console.py").status_code == 404
    assert client.get("/ui/static/nope.js").status_code == 404
    assert "/docs" in client.get("/ui").text  # the console links the API docs


def test_swagger_and_redoc_load_their_packaged_assets(client):
    docs = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs and "/docs/assets/swagger-ui.css" in docs
    assert "/docs/assets/redoc.standalone.js" in client.get("/redoc").text
    assert client.get("/docs/assets/swagger-ui-bundle.js").content.startswith(b"/*! For license")
    assert client.get("/docs/assets/other.js").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_options_table_for_the_new_task_form(client):
    opts = {o["name"]: o for o in client.get("/ui/api/options").json()}
    assert opts["epochs"]["default"] == 30 and opts["epochs"]["ge"] == 1
    # defaults that depend on the task type are listed per type (the form leaves them to the server)
    assert opts["prefix_length"]["task_defaults"] == {"classification": 16, "token-classification": 64}
    assert opts["epochs"]["task_defaults"] is None
    assert "holdout_fraction" in opts and "backbone_lr" not in opts  # CLI-only options are not offered


def test_dataset_list_and_preview(client):
    data = jsonl(
        {"text": "good film", "label": "pos"},
        {"text": "bad film", "label": "neg"},
        {"text": "great film", "label": "pos"},
    )
    up = client.post(
        "/datasets", files={"file": ("reviews.jsonl", data)}, data={"task_type": "classification"}
    )
    assert up.status_code == 201, up.text
    ds_id = up.json()["id"]
    assert [d["id"] for d in client.get("/ui/api/datasets").json()] == [ds_id]
    p = client.get(f"/ui/api/datasets/{ds_id}/preview").json()
    assert p["rows"] == 3 and p["labels"] == {"pos": 2, "neg": 1} and p["columns"] == ["text", "label"]
    assert p["first_rows"][0]["text"] == "good film"
    bad = client.get(f"/ui/api/datasets/{ds_id}/preview", params={"task_type": "regression"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "score"
    assert client.get("/ui/api/datasets/nope/preview").status_code == 404


def test_console_data_needs_a_key_when_keys_are_required(settings_factory, hub_factory):
    from starlette.testclient import TestClient

    from app.main import create_app

    settings = settings_factory(auth="required")
    with TestClient(create_app(settings, hub_factory(settings))) as c:
        assert c.get("/ui").status_code == 200  # the page itself holds no data
        assert c.get("/ui/api/datasets").status_code == 401
        assert c.get("/docs").status_code == 200
