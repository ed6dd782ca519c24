"""Device LRU of loaded tasks, keyed (task, version, sha256) and bounded by bytes.

A task version is immutable once written (its sha256 is part of the key), so a cached entry
never goes stale: a new or re-activated version is simply another key. Loads of one key are
serialised so concurrent misses load the file once; loads of different keys run in parallel.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.engine.model import ServingTask

CacheKey = tuple[str, int, str]


@dataclass
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes_used: int
    budget_bytes: int


class PrefixCache:
    """Thread-safe LRU of ServingTasks sized by ServingTask.nbytes().

    The most recently used entry is always kept, even when it alone is over the budget.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[CacheKey, tuple[ServingTask, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[CacheKey, threading.Lock] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: CacheKey, loader: Callable[[], ServingTask]) -> ServingTask:
        task = self._lookup(key)
        if task is not None:
            return task
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            task = self._lookup(key, count_miss=True)
            if task is not None:
                return task
            task = loader()
            self.put(key, task)
        with self._lock:
            self._key_locks.pop(key, None)
        return task

    def _lookup(self, key: CacheKey, count_miss: bool = False) -> ServingTask | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if count_miss:
                    self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: CacheKey, task: ServingTask) -> None:
        size = task.nbytes()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (task, size)
            self._bytes += size
            while self._bytes > self.budget_bytes and len(self._entries) > 1:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self.evictions += 1

    def discard_task(self, name: str) -> int:
        """Drop every cached version of a task; returns how many entries went."""
        with self._lock:
            keys = [k for k in self._entries if k[0] == name]
            for k in keys:
                self._bytes -= self._entries.pop(k)[1]
            return len(keys)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self.hits,
                misses=self.misses,
                evictions=self.evictions,
                entries=len(self._entries),
                bytes_used=self._bytes,
                budget_bytes=self.budget_bytes,
            )
