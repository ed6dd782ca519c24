"""Issue 12, item 11: a failing row fails only its own request, and waits on the batcher time out."""

from __future__ import annotations

import threading
import time

import pytest

from app.engine.predict import prepare
from tests.helpers import make_serving_task


@pytest.fixture
def task(tiny_backbone):
    return make_serving_task(tiny_backbone, "classification", seed=1)


def test_a_failing_row_fails_only_its_own_request(tiny_backbone, task):
    """Three requests of three clients land in one batch; the middle one holds a row whose forward
    fails (a token id outside the vocabulary). The other two get their answers, equal to running
    alone; only the bad one fails."""
    from app.serving.batcher import Batcher

    good = prepare(task, tiny_backbone.tokenizer, [{"text": "fine words"}, {"text": "more"}]).features
    bad = {"input_ids": [101, 10**7, 102], "token_type_ids": [0, 0, 0]}
    alone = Batcher([tiny_backbone], max_batch_size=8, max_wait_ms=1).start()
    try:
        want = alone.submit([(task, f) for f in good]).result(timeout=30)
    finally:
        alone.close()

    batcher = Batcher([tiny_backbone], max_batch_size=8, max_wait_ms=300).start()
    try:
        a = batcher.submit([(task, f) for f in good])
        b = batcher.submit([(task, good[0]), (task, bad)])
        c = batcher.submit([(task, good[1])])
        got_a = a.result(timeout=30)
        got_c = c.result(timeout=30)
        with pytest.raises(Exception, match="index|range"):  # noqa: B017 - the forward's own error
            b.result(timeout=30)
        assert batcher.stats().batches == 1  # they did share the batch
        assert batcher.stats().isolations == 1
        for x, y in zip(got_a, want, strict=True):
            assert (x - y).abs().max() <= 1e-5
        assert (got_c[0] - want[1]).abs().max() <= 1e-5
        # the worker goes on serving
        assert len(batcher.submit([(task, good[0])]).result(timeout=30)) == 1
    finally:
        batcher.close()


def _stuck_batcher(hub, release: threading.Event) -> None:
    real = hub.batcher._forward

    def slow(*args, **kw):
        release.wait(20)
        return real(*args, **kw)

    hub.batcher._forward = slow


def test_a_stuck_batcher_answers_504_after_the_timeout(hub_factory, settings_factory):
    from app.main import create_app
    from tests.helpers import local_client

    settings = settings_factory(predict_timeout_s=0.5)
    hub = hub_factory(settings)
    app = create_app(settings, hub)
    release = threading.Event()
    with local_client(app) as client:
        hub.wait_ready(30)
        from tests.helpers import publish_task

        publish_task(settings, hub.backbone, "sent")
        _stuck_batcher(hub, release)
        t0 = time.monotonic()
        try:
            r = client.post("/predict/sent", json={"inputs": ["hello"]})
        finally:
            release.set()
        took = time.monotonic() - t0
        assert r.status_code == 504, r.text
        assert "not answered within 0.5 s" in r.json()["detail"]
        assert r.headers.get("retry-after")
        assert took < 5
        assert hub.admission.held() == 0  # the timed-out request gave its admission back
        r = client.post("/predict/sent", json={"inputs": ["hello"]})
        assert r.status_code == 200, r.text
