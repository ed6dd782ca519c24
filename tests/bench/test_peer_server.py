"""The peers' batcher (bench/peer_server.py): requests share forwards, each gets its own rows back."""

from __future__ import annotations

import asyncio

import pytest

from bench.peer_server import MicroBatcher


def _run(batcher: MicroBatcher, requests: list[tuple[str, list[str]]]):
    async def main():
        server = asyncio.create_task(batcher.serve())
        await asyncio.sleep(0)
        try:
            return await asyncio.gather(
                *(batcher.submit(task, texts) for task, texts in requests), return_exceptions=True
            )
        finally:
            server.cancel()

    return asyncio.run(main())


def test_concurrent_requests_share_forwards_and_get_their_own_rows():
    seen: list[int] = []

    def run_rows(texts, tasks):
        seen.append(len(texts))
        return [{"text": x, "task": t} for x, t in zip(texts, tasks, strict=True)]

    requests = [(f"t{i % 3}", [f"r{i}-{j}" for j in range(1 + i % 4)]) for i in range(20)]
    out = _run(MicroBatcher(run_rows, max_rows=8, max_wait_s=0.05), requests)
    for (task, texts), preds in zip(requests, out, strict=True):
        assert preds == [{"text": x, "task": task} for x in texts]
    assert len(seen) < len(requests) and max(seen) <= 8 and sum(seen) == sum(len(t) for _, t in requests)


def test_every_request_alone_when_max_rows_is_zero_and_errors_reach_every_waiter():
    sizes: list[int] = []

    def run_rows(texts, tasks):
        sizes.append(len(texts))
        if "boom" in texts:
            raise ValueError("bad batch")
        return [{} for _ in texts]

    out = _run(MicroBatcher(run_rows, max_rows=0, max_wait_s=0.05), [("a", ["x", "y"]), ("b", ["boom"])])
    assert sizes == [2, 1] and out[0] == [{}, {}]
    with pytest.raises(ValueError, match="bad batch"):
        raise out[1]
