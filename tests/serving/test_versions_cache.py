"""The hub's cached version lookup (app.serving.versions_cache): TTL, invalidation, lookups in
flight across an invalidation, cached "not found", bounded size, and ttl 0 = no cache."""

from __future__ import annotations

import threading
import time

import pytest

from app.serving.hub import TaskNotFound
from app.serving.versions_cache import CachedResolver


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(ttl: float = 0.5, **kw):
    db = {"a": (1, "sha-a1"), "b": (3, "sha-b3")}
    calls: list[tuple[str, int | None]] = []

    def fetch(name: str, version: int | None):
        calls.append((name, version))
        if name not in db:
            raise TaskNotFound(name, version)
        return db[name]

    clock = Clock()
    return CachedResolver(fetch, ttl, not_found=TaskNotFound, clock=clock, **kw), db, calls, clock


def test_a_warm_entry_is_served_without_a_fetch_until_its_ttl_ends():
    r, db, calls, clock = make(ttl=0.5)
    assert r("a", None) == (1, "sha-a1")
    db["a"] = (2, "sha-a2")
    clock.now += 0.49
    assert [r("a", None) for _ in range(100)] == [(1, "sha-a1")] * 100
    assert len(calls) == 1 and r.fetches == 1
    clock.now += 0.02  # older than the TTL: asked again
    assert r("a", None) == (2, "sha-a2")
    assert len(calls) == 2


def test_invalidating_a_task_forgets_only_its_entries():
    r, db, calls, _ = make(ttl=60)
    r("a", None), r("a", 1), r("b", None)
    db["a"] = (2, "sha-a2")
    r.invalidate("a")
    assert r("a", None) == (2, "sha-a2")
    assert r("b", None) == (3, "sha-b3")
    assert calls == [("a", None), ("a", 1), ("b", None), ("a", None)]
    r.invalidate(None)
    r("b", None)
    assert calls[-1] == ("b", None)


def test_not_found_is_cached_and_raised_fresh_each_time():
    r, db, calls, _ = make(ttl=60)
    for _ in range(3):
        with pytest.raises(TaskNotFound) as info:
            r("nope", None)
        assert info.value.name == "nope"
    assert calls == [("nope", None)]
    db["nope"] = (1, "sha-n1")
    r.invalidate("nope")  # the publish's notification
    assert r("nope", None) == (1, "sha-n1")


def test_a_lookup_in_flight_during_an_invalidation_is_not_cached():
    """The old answer read before a commit must not outlive the commit's invalidation."""
    started, release = threading.Event(), threading.Event()
    db = {"a": (1, "old")}

    def fetch(name, version):
        answer = db[name]
        started.set()
        release.wait(5)
        return answer

    r = CachedResolver(fetch, 60, not_found=TaskNotFound)
    out: list = []
    t = threading.Thread(target=lambda: out.append(r("a", None)))
    t.start()
    assert started.wait(5)
    db["a"] = (2, "new")
    r.invalidate("a")
    release.set()
    t.join(5)
    assert out == [(1, "old")]  # that request had already asked
    started.clear()
    release.set()
    assert r("a", None) == (2, "new")  # but the next one is not served the old answer


def test_entries_are_bounded_least_recently_used_first():
    r, _, calls, _ = make(ttl=60, max_entries=3)
    for i in range(10):
        with pytest.raises(TaskNotFound):
            r(f"t{i}", None)
    assert len(r) == 3
    r("a", None)
    assert len(r) == 3


def test_ttl_zero_fetches_every_time():
    r, db, calls, _ = make(ttl=0)
    for _ in range(5):
        r("a", None)
    assert len(calls) == 5 and len(r) == 0


def test_concurrent_misses_of_one_key_make_one_lookup():
    """An expiry under load costs one query, not one per request in flight (single flight)."""
    release = threading.Event()
    calls: list[str] = []

    def fetch(name, version):
        calls.append(name)
        release.wait(5)
        return (1, "sha")

    r = CachedResolver(fetch, 60, not_found=TaskNotFound)
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(r("a", None))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join(5)
    assert out == [(1, "sha")] * 8 and calls == ["a"]
