"""Admission: how much prediction work (characters of input text) may be in flight, per client key
and over the whole server, BEFORE any of it is done (tokenising, queueing, the forward).

A request is admitted when its client's characters in flight plus its own stay within the per-key
budget and the server's total stays within the global budget; otherwise it is refused at once with
`Overloaded` (a QueueFull: 429 with Retry-After), before it costs anything. A client with nothing in
flight is always admitted while the global budget allows, so a request inside the request limits is
never refused forever; a key that floods the server with long texts waits for its own work to
finish while the other keys keep their share. The cost is held until the request's answer is ready.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from app.serving.batcher import QueueFull

LOCAL = "_local"  # requests without a key (keyless loopback mode) share one budget


class Overloaded(QueueFull):
    """The client (or the server) has too much work in flight; retry later (429)."""

    def __init__(self, who: str, held: int, cost: int, limit: int, retry_after_s: float = 1.0) -> None:
        self.rows = cost
        self.depth = held
        self.limit = limit
        self.retry_after_s = retry_after_s
        RuntimeError.__init__(
            self,
            f"too much prediction work in flight {who}: {held} characters of input are being served, "
            f"this request adds {cost}, the limit is {limit}; retry later",
        )


@dataclass
class AdmissionStats:
    inflight_chars: int
    inflight_keys: int
    admitted: int
    refused: int


class Ticket:
    """What one admitted request holds; `release` (idempotent) gives it back."""

    __slots__ = ("_admission", "cost", "key")

    def __init__(self, admission: Admission | None, key: str, cost: int) -> None:
        self._admission = admission
        self.key = key
        self.cost = cost

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self.key, self.cost)


class Admission:
    def __init__(self, per_key_chars: int, total_chars: int) -> None:
        self.per_key_chars = max(1, int(per_key_chars))
        self.total_chars = max(1, int(total_chars))
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._total = 0
        self._admitted = 0
        self._refused = 0

    def acquire(self, key: str | None, cost: int) -> Ticket:
        """Admit `cost` characters for `key` (None: the keyless local client) or raise Overloaded."""
        key = key or LOCAL
        cost = max(1, int(cost))
        with self._lock:
            held = self._held.get(key, 0)
            if held and held + cost > self.per_key_chars:
                self._refused += 1
                raise Overloaded("for this API key", held, cost, self.per_key_chars)
            if self._total and self._total + cost > self.total_chars:
                self._refused += 1
                raise Overloaded("on this server", self._total, cost, self.total_chars)
            self._held[key] = held + cost
            self._total += cost
            self._admitted += 1
        return Ticket(self, key, cost)

    def _release(self, key: str, cost: int) -> None:
        with self._lock:
            left = self._held.get(key, 0) - cost
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)
            self._total = max(0, self._total - cost)

    def held(self, key: str | None = None) -> int:
        with self._lock:
            return self._total if key is None else self._held.get(key, 0)

    def stats(self) -> AdmissionStats:
        with self._lock:
            return AdmissionStats(self._total, len(self._held), self._admitted, self._refused)


def input_chars(records: list[dict]) -> int:
    """The characters of text in prediction records (the tokenisation work they ask for)."""
    n = 0
    for record in records:
        for value in record.values():
            if isinstance(value, str):
                n += len(value)
            elif isinstance(value, list):
                n += sum(len(v) for v in value if isinstance(v, str))
    return n
