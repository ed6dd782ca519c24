"""30 concurrent requests over 3 tasks of different types give the one-by-one results."""

from __future__ import annotations

import asyncio

import httpx
import pytest

TEXTS = ["good", "a much longer sentence with several words in it", "Ada lives in Paris", "no"]
QA = {"question": "Who?", "context": "Jane Austen wrote it in 1813 in Hampshire."}


def _request(i: int) -> tuple[str, dict]:
    kind = ("sentiment", "ner", "qa")[i % 3]
    if kind == "qa":
        return kind, {"inputs": [QA, {"question": "When?", "context": TEXTS[i % 4] + " in 1999."}]}
    return kind, {"inputs": [TEXTS[i % 4], TEXTS[(i + 1) % 4]]}


def _numbers(pred: dict) -> list[float]:
    if isinstance(pred.get("scores"), dict):  # classification: a score per label
        return [pred["scores"][k] for k in sorted(pred["scores"])]
    if isinstance(pred.get("scores"), list):  # token classification: a score per word
        return list(pred["scores"])
    return [pred.get("score", 0.0)]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_concurrent_mixed_requests_match_sequential(app, hub, publish):
    publish("sentiment", seed=1)
    publish("ner", "token-classification", seed=2)
    publish("qa", "question-answering", seed=3)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", timeout=60) as c:
            sequential = []
            for i in range(30):
                task, body = _request(i)
                r = await c.post(f"/predict/{task}", json=body)
                assert r.status_code == 200, r.text
                sequential.append(r.json())
            before = hub.batcher.stats()
            responses = await asyncio.gather(
                *(c.post(f"/predict/{_request(i)[0]}", json=_request(i)[1]) for i in range(30))
            )
            after = hub.batcher.stats()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    worst = 0.0
    for seq, r in zip(sequential, responses, strict=True):
        got = r.json()
        assert got["task"] == seq["task"] and got["version"] == seq["version"]
        for a, b in zip(seq["predictions"], got["predictions"], strict=True):
            if "tags" in a:
                assert a["tags"] == b["tags"] and a["entities"] == b["entities"]
            if "answer" in a:
                assert (a["start"], a["end"]) == (b["start"], b["end"])
            worst = max(worst, *(abs(x - y) for x, y in zip(_numbers(a), _numbers(b), strict=True)))
    assert worst <= 1e-4
    new_sizes = {k: after.batch_sizes.get(k, 0) - before.batch_sizes.get(k, 0) for k in after.batch_sizes}
    assert max(k for k, n in new_sizes.items() if n > 0) > 2  # requests of different tasks shared forwards
