"""Fuzz: schemathesis generates requests from the app's OpenAPI schema, valid and invalid, for every
operation, sent with an admin API key to an app that requires keys. No answer may be a 5xx and none
may hang."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from app.db import keys
from tests.helpers import session_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # 26 operations, a shared 2-core machine

MAX_EXAMPLES = 60  # per operation
CALL_LIMIT_S = 20.0
TALLY: Counter[str] = Counter()
SLOWEST: list[float] = [0.0]
NO_NEGATIVE: list[str] = []


@pytest.fixture
def fuzz_app(settings_factory, hub_factory):
    from app.main import create_app
    from tests.helpers import publish_task

    settings = settings_factory(auth="required", max_queued_jobs=20, max_inputs_per_request=16)
    hub = hub_factory(settings)
    app = create_app(settings, hub)
    client = TestClient(app)
    client.__enter__()  # runs the lifespan: migrations, store sync, batcher
    publish_task(hub.settings, hub.backbone, "sentiment")
    publish_task(hub.settings, hub.backbone, "ner", "token-classification")
    publish_task(hub.settings, hub.backbone, "qa", "question-answering")
    with session_for(hub.settings) as s:
        app.state.fuzz_token = keys.create_key(s, name="fuzz", scopes=["admin"])[1]
    yield app
    client.__exit__(None, None, None)


def _operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [r.ok() for r in schema.get_all_operations()]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_errors(fuzz_app, mode):
    """Every operation, MAX_EXAMPLES cases each, fitting the schema (positive) or not (negative).

    The schemathesis pytest plugin does not run on pytest 9 here, so the strategies are driven with
    hypothesis directly."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    headers = {"Authorization": f"Bearer {fuzz_app.state.fuzz_token}"}
    operations = _operations(fuzz_app)
    assert len(operations) >= 13

    for op in operations:

        @given(case=op.as_strategy(GenerationMode(mode)))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            start = time.monotonic()
            response = case.call(headers=headers)
            took = time.monotonic() - start
            SLOWEST[0] = max(SLOWEST[0], took)
            TALLY[f"{mode} {case.method} {case.path} {response.status_code}"] += 1
            assert response.status_code < 500, (
                case.method,
                case.formatted_path,
                case.body if not isinstance(case.body, bytes) else case.body[:200],
                response.status_code,
                response.text[:500],
            )
            assert took < CALL_LIMIT_S, f"{case.method} {case.formatted_path} took {took:.1f}s"

        try:
            run()
        except Unsatisfiable:  # nothing to break: an operation without parameters has no negative case
            assert mode == "negative", op.label
            NO_NEGATIVE.append(op.label)


def test_zz_fuzz_tally():
    """Prints what the fuzzing above sent and got (runs after it, in file order)."""
    total = sum(TALLY.values())
    by_status: Counter[str] = Counter()
    for k, n in TALLY.items():
        mode, _method, _path, status = k.split(" ")
        by_status[f"{mode} {status}"] += n
    print(
        f"\nfuzz: {total} requests, statuses {dict(sorted(by_status.items()))}, slowest {SLOWEST[0]:.2f}s, "
        f"operations without a negative case: {NO_NEGATIVE}"
    )
    print("\n".join(f"  {k}: {n}" for k, n in sorted(TALLY.items()) if k.split()[-1] == "401"))
    assert not any(s.split()[1].startswith("5") for s in by_status)
