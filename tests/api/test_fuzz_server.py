"""Fuzz a real uvicorn server on 127.0.0.1 (issue 12 item 13): schemathesis generates requests from
the typed OpenAPI document (task-name patterns, /train as TrainRequest | MultiTrainRequest), fitting
the schema (positive) and not (negative), sent with several keys of different scopes and none. No
answer may be a 5xx. Bounded: MAX_EXAMPLES cases per operation and mode."""

from __future__ import annotations

import itertools
import time
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from app.db import keys
from tests.helpers import ServerThread, publish_task, session_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # 26 operations, a shared 2-core machine

MAX_EXAMPLES = 60  # per operation and mode
CALL_LIMIT_S = 20.0


@pytest.fixture
def fuzz_server(settings_factory, hub_factory):
    from app.main import create_app

    s = settings_factory(auth="required", max_queued_jobs=20, max_inputs_per_request=16, key_rate_limit="")
    hub = hub_factory(s)
    app = create_app(s, hub)
    with ServerThread(app, s, "127.0.0.1") as srv:
        publish_task(s, hub.backbone, "sentiment")
        publish_task(s, hub.backbone, "ner", "token-classification")
        publish_task(s, hub.backbone, "qa", "question-answering")
        with session_for(s) as db:
            tokens = {
                "admin": keys.create_key(db, name="admin", scopes=["admin"])[1],
                "predict": keys.create_key(db, name="p", scopes=["predict"])[1],
                "train": keys.create_key(db, name="t", scopes=["train"])[1],
                "sent-admin": keys.create_key(db, name="sa", scopes=["admin"], tasks=["sent*"])[1],
                "none": "",
            }
        yield srv, tokens


def test_no_5xx_from_a_real_server(fuzz_server):
    srv, tokens = fuzz_server
    doc = httpx.get(srv.base + "/openapi.json").json()
    assert doc["paths"]["/train"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    schema = schemathesis.openapi.from_url(srv.base + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 13
    rotation = itertools.cycle(tokens.items())
    tally: Counter[str] = Counter()
    bad: list[tuple] = []
    slowest = [0.0]
    no_negative: list[str] = []
    start_all = time.monotonic()
    current = {"mode": ""}
    for mode, op in itertools.product(("positive", "negative"), operations):
        current["mode"] = mode

        @given(case=op.as_strategy(GenerationMode(mode)))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            who, token = next(rotation)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            start = time.monotonic()
            response = case.call(base_url=srv.base, headers=headers, timeout=CALL_LIMIT_S)
            took = time.monotonic() - start
            slowest[0] = max(slowest[0], took)
            tally[f"{current['mode']} {response.status_code}"] += 1
            if response.status_code >= 500:
                bad.append(
                    (
                        current["mode"],
                        who,
                        case.method,
                        case.formatted_path,
                        str(case.body)[:200],
                        response.text[:300],
                    )
                )
            assert took < CALL_LIMIT_S

        try:
            run()
        except Unsatisfiable:
            no_negative.append(f"{mode} {op.label}")
    total = sum(tally.values())
    print(
        f"\nfuzz (real server): {total} requests in {time.monotonic() - start_all:.0f}s, "
        f"statuses {dict(sorted(tally.items()))}, slowest {slowest[0]:.2f}s, 5xx {len(bad)}, "
        f"without a negative case: {no_negative}"
    )
    assert not bad, bad[:5]
    assert total >= 200
