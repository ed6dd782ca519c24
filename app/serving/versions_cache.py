"""The hub's version lookup, cached: (task, version | None) -> (number, sha256) or "not found".

Without it every prediction asks the database for the task's active version. With it a replica
asks once, then serves from memory until

- the entry is invalidated: PostgreSQL tells every process that listens (app.db.notify, LISTEN /
  NOTIFY sent in the transaction that publishes, activates or deletes) and the writing process
  invalidates its own cache as it commits, so a client that activated a version on one replica
  and predicts on the same one sees its change at once;
- or it is older than `ttl_s`: the fallback when a notification is lost (the listener's
  connection broke, a partition not yet noticed). A lost connection also invalidates everything
  when it is lost and again when LISTEN is back.

A lookup that started before an invalidation and ends after it is not cached (its answer may be
the old one): every invalidation bumps a generation, and an answer is kept only when the
generation it started under is still the current one.

Concurrent misses of one key make one lookup: the first asks, the others wait for its answer
(so an expiry under load costs one query, not one per client in flight).

Negative answers ("no such task") are cached too, so a client asking for random names costs one
query per name per `ttl_s`; the entries are bounded (least recently used go first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

Key = tuple[str, int | None]
Answer = tuple[int, str]


class CachedResolver:
    """`resolve(name, version) -> (number, sha256)` over `fetch`, with `ttl_s` and invalidation.

    `ttl_s <= 0`: no cache (every call fetches), today's behaviour for SQLite, where the worker
    process writes the same file and no notification reaches the server."""

    def __init__(
        self,
        fetch: Callable[[str, int | None], Answer],
        ttl_s: float,
        *,
        max_entries: int = 10_000,
        not_found: type[Exception] = LookupError,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._not_found = not_found
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[float, int, Answer | Exception]] = OrderedDict()
        self._generation = 0
        self._inflight: dict[Key, threading.Event] = {}  # one lookup a key at a time (single flight)
        self.follower_wait_s = 5.0
        self.fetches = 0  # lookups that went to the database (tests, bench)
        self.invalidations = 0

    def __call__(self, name: str, version: int | None) -> Answer:
        if self.ttl_s <= 0:
            self.fetches += 1
            return self._fetch(name, version)
        key = (name, version)
        for _ in range(2):  # a follower that found no answer after its leader asks itself
            now = self._clock()
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None and now - hit[0] < self.ttl_s:
                    self._entries.move_to_end(key)
                    return self._answer(hit[2])
                flight = self._inflight.get(key)
                if flight is None:  # this thread asks; concurrent misses of the key wait for it
                    flight = self._inflight[key] = threading.Event()
                    break
            flight.wait(self.follower_wait_s)
        else:
            flight = None
        generation = self._generation
        try:
            self.fetches += 1
            try:
                answer: Answer | Exception = self._fetch(name, version)
            except self._not_found as e:
                answer = e
            with self._lock:
                if generation == self._generation:  # nothing was invalidated while we asked
                    self._entries[key] = (now, generation, answer)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
        finally:
            if flight is not None:
                with self._lock:
                    if self._inflight.get(key) is flight:
                        del self._inflight[key]
                flight.set()
        return self._answer(answer)

    @staticmethod
    def _answer(answer: Answer | Exception) -> Answer:
        if isinstance(answer, Exception):
            raise answer.with_traceback(None)  # not a traceback growing with every raise
        return answer

    def invalidate(self, name: str | None = None) -> None:
        """Forget `name`'s entries (None: everything). Lookups in flight are not cached."""
        with self._lock:
            self._generation += 1
            self.invalidations += 1
            if name is None:
                self._entries.clear()
            else:
                for key in [k for k in self._entries if k[0] == name]:
                    del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
