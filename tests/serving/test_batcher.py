"""Batcher: rows of mixed tasks share forwards and give the single-task results."""

from __future__ import annotations

import threading

import pytest
import torch

from app.engine.predict import finish, predict, prepare
from tests.helpers import make_serving_task

TEXTS = ["a short one", "a somewhat longer sentence about nothing much", "hi", "the quick brown fox jumps"]


@pytest.fixture
def tasks(tiny_backbone):
    return {
        "cls": make_serving_task(tiny_backbone, "classification", seed=1),
        "cls2": make_serving_task(tiny_backbone, "classification", seed=5, prefix_length=7),
        "ner": make_serving_task(tiny_backbone, "token-classification", seed=2),
        "qa": make_serving_task(tiny_backbone, "question-answering", seed=3),
    }


def _records(kind: str, i: int) -> list[dict]:
    if kind == "qa":
        return [{"question": "what?", "context": TEXTS[i % 4] + " " + TEXTS[(i + 1) % 4]}]
    return [{"text": TEXTS[i % 4]}, {"text": TEXTS[(i + 2) % 4]}]


def _flat(preds: list[dict]) -> list[float]:
    out: list[float] = []
    for p in preds:
        if isinstance(p.get("scores"), dict):  # classification: a score per label
            out += [p["scores"][k] for k in sorted(p["scores"])]
        elif isinstance(p.get("scores"), list):  # token classification: a score per word
            out += list(p["scores"])
        elif "score" in p:
            out.append(p["score"])
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_mixed_concurrent_batches_match_single_task(tiny_backbone, tasks, workers):
    from app.serving.batcher import Batcher

    backbones = [tiny_backbone] * workers  # one worker thread per device; CPU stands in for each
    batcher = Batcher(backbones, max_batch_size=16, max_wait_ms=20, max_queue_rows=1024).start()
    kinds = list(tasks)
    results: dict[int, list[dict]] = {}
    start = threading.Barrier(24)

    def run(i: int) -> None:
        task = tasks[kinds[i % len(kinds)]]
        prepared = prepare(task, tiny_backbone.tokenizer, _records(kinds[i % len(kinds)], i))
        start.wait(5)
        fut = batcher.submit([(task, f) for f in prepared.features])
        results[i] = finish(task, prepared, fut.result(timeout=30))

    try:
        with torch.inference_mode():
            threads = [threading.Thread(target=run, args=(i,)) for i in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        stats = batcher.stats()
    finally:
        batcher.close()
    assert len(results) == 24
    assert stats.rows >= 24 and max(stats.batch_sizes) > 1, stats  # rows did share forwards
    for i, got in results.items():
        kind = kinds[i % len(kinds)]
        want = predict(tiny_backbone, tasks[kind], _records(kind, i))
        if kind == "ner":
            assert [p["tags"] for p in got] == [p["tags"] for p in want]
        if kind == "qa":
            assert [(p["start"], p["end"]) for p in got] == [(p["start"], p["end"]) for p in want]
        diff = max((abs(a - b) for a, b in zip(_flat(got), _flat(want), strict=True)), default=0.0)
        assert diff <= 1e-4, (kind, diff)


def test_queue_bound(tiny_backbone, tasks):
    from app.serving.batcher import Batcher, QueueFull, TooManyRows

    batcher = Batcher([tiny_backbone], max_batch_size=4, max_wait_ms=1, max_queue_rows=3)  # not started
    feats = prepare(tasks["cls"], tiny_backbone.tokenizer, [{"text": t} for t in TEXTS]).features
    with pytest.raises(TooManyRows):  # could never fit
        batcher.submit([(tasks["cls"], f) for f in feats])
    fut = batcher.submit([(tasks["cls"], f) for f in feats[:2]])
    with pytest.raises(QueueFull) as e:  # fits once the queue drains
        batcher.submit([(tasks["cls"], f) for f in feats[2:]])
    assert "3" in str(e.value)
    assert batcher.queue_depth() == 2
    batcher.start()
    assert len(fut.result(timeout=10)) == 2
    assert batcher.queue_depth() == 0
    batcher.close()


def test_task_object_is_held_across_a_swap(tiny_backbone, tasks):
    """A request runs on the ServingTask it captured, whatever happens to names meanwhile."""
    from app.serving.batcher import Batcher

    batcher = Batcher([tiny_backbone], max_batch_size=8, max_wait_ms=1).start()
    try:
        old = tasks["cls"]
        prepared = prepare(old, tiny_backbone.tokenizer, [{"text": "hello"}])
        fut = batcher.submit([(old, prepared.features[0])])
        tasks["cls"] = tasks["cls2"]  # the "active version" changes while in flight
        got = finish(old, prepared, fut.result(timeout=10))
        want = predict(tiny_backbone, old, [{"text": "hello"}])
        assert abs(got[0]["score"] - want[0]["score"]) <= 1e-5
    finally:
        batcher.close()


def test_failures_reach_the_caller_and_the_worker_survives(tiny_backbone, tasks):
    from app.serving.batcher import Batcher

    batcher = Batcher([tiny_backbone], max_batch_size=8, max_wait_ms=1).start()
    try:
        bad = batcher.submit([(tasks["cls"], {"input_ids": []})])
        with pytest.raises(Exception):  # noqa: B017 - whatever the forward raised
            bad.result(timeout=10)
        feats = prepare(tasks["cls"], tiny_backbone.tokenizer, [{"text": "ok"}]).features
        assert len(batcher.submit([(tasks["cls"], feats[0])]).result(timeout=10)) == 1
    finally:
        batcher.close()


def test_close_fails_pending_requests(tiny_backbone, tasks):
    from app.serving.batcher import Batcher, BatcherClosed

    batcher = Batcher([tiny_backbone])
    feats = prepare(tasks["cls"], tiny_backbone.tokenizer, [{"text": "ok"}]).features
    fut = batcher.submit([(tasks["cls"], feats[0])])
    batcher.close()
    with pytest.raises(BatcherClosed):
        fut.result(timeout=5)
    with pytest.raises(BatcherClosed):
        batcher.submit([(tasks["cls"], feats[0])])


def _rows(n: int, length: int) -> list:
    return [(None, {"input_ids": [1] * length}) for _ in range(n)]


def test_batches_go_round_robin_over_clients_and_hold_a_token_budget():
    """A client with a deep queue of long inputs cannot fill every forward: the next batch takes a
    row of each waiting client in turn, and no batch holds more than max_batch_tokens tokens (a row
    longer than the cap still runs, alone)."""
    from app.serving.batcher import Batcher

    b = Batcher([object()], max_batch_size=4, max_wait_ms=0, max_batch_tokens=300)  # never started
    b.submit(_rows(12, 100), client="flood")
    b.submit(_rows(1, 10), client="good")
    first = b._take()
    assert [it.client for it in first] == ["flood", "good", "flood"]  # 100 + 10 + 100 <= 300 < 310
    assert sum(it.length for it in first) <= 300
    assert b.queue_depth() == 10
    b.submit(_rows(1, 10), client="good")
    assert "good" in [it.client for it in b._take()]  # a waiting client's row is in the next batch
    b.submit(_rows(1, 500), client="huge")
    while b.queue_depth():
        batch = b._take()
        assert len(batch) == 1 or sum(it.length for it in batch) <= 300
    assert b.stats().queue_rows == 0
