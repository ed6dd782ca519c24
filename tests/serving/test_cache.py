"""PrefixCache: LRU by bytes, counters, one load per key under concurrency."""

from __future__ import annotations

import threading
import time

from tests.helpers import make_serving_task


def test_hits_misses_and_lru_eviction(tiny_backbone):
    from app.serving.cache import PrefixCache

    tasks = [make_serving_task(tiny_backbone, seed=i) for i in range(3)]
    size = tasks[0].nbytes()
    cache = PrefixCache(budget_bytes=2 * size)
    loads: list[int] = []

    def loader(i):
        def load():
            loads.append(i)
            return tasks[i]

        return load

    assert cache.get(("a", 1, "x"), loader(0)) is tasks[0]
    assert cache.get(("a", 1, "x"), loader(0)) is tasks[0]
    cache.get(("b", 1, "y"), loader(1))
    cache.get(("a", 1, "x"), loader(0))  # a is now the most recent
    cache.get(("c", 1, "z"), loader(2))  # evicts b, the least recent
    assert ("b", 1, "y") not in cache and ("a", 1, "x") in cache and ("c", 1, "z") in cache
    st = cache.stats()
    assert (st.hits, st.misses, st.evictions, st.entries) == (2, 3, 1, 2)
    assert st.bytes_used == 2 * size
    assert loads == [0, 1, 2]
    assert cache.discard_task("a") == 1 and len(cache) == 1


def test_an_entry_over_budget_is_still_served(tiny_backbone):
    from app.serving.cache import PrefixCache

    task = make_serving_task(tiny_backbone)
    cache = PrefixCache(budget_bytes=1)
    assert cache.get(("a", 1, "x"), lambda: task) is task
    assert len(cache) == 1


def test_concurrent_misses_load_once(tiny_backbone):
    from app.serving.cache import PrefixCache

    task = make_serving_task(tiny_backbone)
    cache = PrefixCache(budget_bytes=10**9)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.05)
        return task

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get(("a", 1, "x"), slow))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and len(results) == 8 and all(r is task for r in results)
    assert cache.stats().misses == 1
