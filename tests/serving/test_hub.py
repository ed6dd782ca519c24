"""The hub without a database: it is given a resolve function and a read function."""

from __future__ import annotations

import asyncio

import pytest

from app.engine import checkpoint
from app.engine.checkpoint import checkpoint_bytes, sha256_bytes
from app.serving.hub import Hub, TaskNotFound
from app.store import PromptStore
from tests.helpers import make_serving_task


def test_hub_serves_through_the_given_functions(settings, tiny_backbone, tmp_path, monkeypatch):
    store = PromptStore(tmp_path / "store")
    blob = checkpoint_bytes(make_serving_task(tiny_backbone), tiny_backbone, {"source": "test"})
    stored = store.write_version("sent", 1, blob, {})
    reads: list[tuple] = []

    def resolve(name: str, version: int | None) -> tuple[int, str]:
        if name != "sent" or version not in (None, 1):
            raise TaskNotFound(name, version)
        return 1, stored.sha256

    def read(name: str, number: int, sha: str) -> bytes:
        reads.append((name, number, sha))
        return store.read_version(name, number, sha)

    hashed: list[int] = []
    monkeypatch.setattr(
        checkpoint, "sha256_bytes", lambda data: hashed.append(len(data)) or sha256_bytes(data)
    )
    hub = Hub(settings, resolve=resolve, read=read, backbones=[tiny_backbone])
    hub.start()
    try:
        version, preds = asyncio.run(hub.predict("sent", ["great", "awful"]))
        assert version == 1 and len(preds) == 2 and "label" in preds[0]
        asyncio.run(hub.predict("sent", ["again"]))
        assert reads == [("sent", 1, stored.sha256)]  # a cache miss reads once, then the cache serves
        assert hashed == []  # the store checked the sha256; loading does not hash the bytes again
        with pytest.raises(TaskNotFound, match="task 'nope' not found"):
            asyncio.run(hub.predict("nope", ["x"]))
        with pytest.raises(TaskNotFound, match="version 2 of task 'sent'"):
            asyncio.run(hub.predict("sent", ["x"], version=2))
    finally:
        hub.close()
