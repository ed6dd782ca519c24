"""Dynamic batching of rows of ANY tasks into one backbone forward per batch.

Requests put their rows (task, features) on one bounded queue, kept per client (the caller's
API key). One worker thread per device takes up to `max_batch_size` rows and at most
`max_batch_tokens` tokens, round robin over the clients that wait (so a client with a deep queue of
long inputs cannot fill every forward while others wait), waiting at most `max_wait_ms` after the
oldest row for more, sorts them by length so rows of similar length share a padded forward, runs
`collate` + `mixed_forward` under inference mode, and resolves each request's future once all
of its rows are done. Rows hold the ServingTask object itself, so a request whose task gets a
new version while it waits still runs on the version it resolved (hot-swap safety).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.engine.backbone import Backbone
from app.engine.batch import collate, length_buckets, mixed_forward
from app.engine.model import ServingTask

log = logging.getLogger(__name__)

Row = tuple[ServingTask, dict]


class QueueFull(RuntimeError):
    """Adding the rows would exceed the queue bound; the client should retry later."""

    def __init__(self, rows: int, depth: int, limit: int, retry_after_s: float = 1.0) -> None:
        self.rows = rows
        self.depth = depth
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(f"the prediction queue is full ({depth} of {limit} rows queued, {rows} more asked)")


class TooManyRows(ValueError):
    """One request holds more rows than the whole queue may: it can never fit, so retrying is futile."""

    def __init__(self, rows: int, limit: int) -> None:
        self.rows = rows
        self.limit = limit
        super().__init__(
            f"the inputs make {rows} rows (long question-answering contexts are split into windows); "
            f"at most {limit} fit the queue: send fewer or shorter inputs"
        )


class BatcherClosed(RuntimeError):
    pass


@dataclass
class _Request:
    future: Future
    results: list[Tensor | None]
    remaining: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, exc: BaseException) -> None:
        with self.lock, contextlib.suppress(InvalidStateError):  # cancelled by a client that left
            if not self.future.done():
                self.future.set_exception(exc)

    def deliver(self, index: int, logits: Tensor) -> None:
        with self.lock:
            if self.future.done() or self.results[index] is not None:  # a retried row: once only
                return
            self.results[index] = logits
            self.remaining -= 1
            if self.remaining == 0:
                with contextlib.suppress(InvalidStateError):
                    self.future.set_result(self.results)


@dataclass
class _Item:
    request: _Request
    index: int
    task: ServingTask
    features: dict
    enqueued: float
    client: str | None = None

    @property
    def length(self) -> int:
        return len(self.features["input_ids"])


@dataclass
class BatcherStats:
    queue_rows: int
    batches: int
    rows: int
    batch_sizes: dict[int, int]
    max_queue_rows: int
    forwards: int = 0  # backbone forwards: a batch of mixed lengths is split into length buckets
    isolations: int = 0  # failed batches whose requests were retried one by one


class Batcher:
    """One bounded row queue, one worker thread per backbone (device)."""

    def __init__(
        self,
        backbones: Sequence[Backbone],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue_rows: int = 2048,
        bucket_overhead_tokens: float | None = None,
        max_batch_tokens: int | None = None,
        pad_length_multiple: int | None = None,
    ) -> None:
        if not backbones:
            raise ValueError("the batcher needs at least one backbone")
        self.backbones = list(backbones)
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.max_queue_rows = max(1, int(max_queue_rows))
        # tokens one batch may hold (a forward's time grows with them): a batch of long rows is cut
        # short so that the rows of other clients wait at most about one such forward. A row
        # longer than the cap still runs, alone. None: no cap.
        self.max_batch_tokens = None if max_batch_tokens is None else max(1, int(max_batch_tokens))
        # The fixed cost of one more forward, in padded tokens, when a batch of mixed lengths is
        # split into length buckets (see app.engine.batch.length_buckets). On a CPU a padded token
        # costs as much as a real one and a forward's fixed cost is a few tokens' worth, so
        # splitting pays; on a GPU small forwards are launch-bound, so split only for big savings.
        # With packed tokens (Backbone.pack_tokens) a padded token costs in attention only, and
        # buckets measured about even with one packed forward (docs/benchmarks.md, "Packed tokens").
        self.bucket_overhead_tokens = bucket_overhead_tokens
        # a GPU reuses kernels (and cached allocations) for repeated shapes: lengths padded to a
        # multiple; on a CPU every padded token costs a real one, so none by default
        self.pad_length_multiple = pad_length_multiple
        self._forwards = 0
        self._isolations = 0  # failed batches retried request by request
        self._queues: OrderedDict[str | None, deque[_Item]] = OrderedDict()  # per client, in turn order
        self._depth = 0
        self._cond = threading.Condition()
        self._closed = False
        self._batches = 0
        self._rows = 0
        self._sizes: dict[int, int] = {}
        self._threads: list[threading.Thread] = []
        self._moved: list[dict[int, tuple[ServingTask, ServingTask]]] = [{} for _ in self.backbones]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Batcher:
        for i, bb in enumerate(self.backbones):
            t = threading.Thread(target=self._run, args=(i,), name=f"batcher-{bb.device}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            pending = [it for q in self._queues.values() for it in q]
            self._queues.clear()
            self._depth = 0
            self._cond.notify_all()
        for item in pending:
            item.request.fail(BatcherClosed("the server is shutting down"))
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    # ------------------------------------------------------------------ requests
    def submit(self, rows: Sequence[Row], client: str | None = None) -> Future:
        """Queue rows; the future resolves to one CPU logits tensor per row, in order. `client` (the
        caller's key id; None: keyless) is the unit of fairness between queued rows."""
        future: Future = Future()
        if not rows:
            future.set_result([])
            return future
        if len(rows) > self.max_queue_rows:
            raise TooManyRows(len(rows), self.max_queue_rows)
        request = _Request(future=future, results=[None] * len(rows), remaining=len(rows))
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            depth = self._depth
            if depth + len(rows) > self.max_queue_rows:
                raise QueueFull(len(rows), depth, self.max_queue_rows)
            queue = self._queues.setdefault(client, deque())
            for i, (task, feats) in enumerate(rows):
                queue.append(_Item(request, i, task, feats, now, client))
            self._depth += len(rows)
            self._cond.notify_all()
        return future

    def queue_depth(self) -> int:
        with self._cond:
            return self._depth

    def stats(self) -> BatcherStats:
        with self._cond:
            return BatcherStats(
                queue_rows=self._depth,
                batches=self._batches,
                rows=self._rows,
                batch_sizes=dict(self._sizes),
                max_queue_rows=self.max_queue_rows,
                forwards=self._forwards,
                isolations=self._isolations,
            )

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[_Item] | None:
        """Block for the next batch: up to max_batch_size rows (and max_batch_tokens tokens), or
        what came within max_wait of the oldest row, taken round robin over the waiting clients."""
        with self._cond:
            while not self._depth and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = min(q[0].enqueued for q in self._queues.values()) + self.max_wait_s
            while self._depth < self.max_batch_size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed or not self._depth:
                return None if self._closed else []
            batch = self._round_robin()
            n = len(batch)
            self._depth -= n
            self._batches += 1
            self._rows += n
            self._sizes[n] = self._sizes.get(n, 0) + 1
        return batch

    def _round_robin(self) -> list[_Item]:
        """One row from each waiting client in turn (under the lock) until the batch is full; a
        client whose turn came moves to the back, so the next batch starts with the others."""
        batch: list[_Item] = []
        tokens = 0
        while self._queues and len(batch) < self.max_batch_size:
            client, queue = next(iter(self._queues.items()))
            item = queue[0]
            if batch and self.max_batch_tokens is not None and tokens + item.length > self.max_batch_tokens:
                break
            batch.append(queue.popleft())
            tokens += item.length
            self._queues.move_to_end(client)
            if not queue:
                del self._queues[client]
        return batch

    def _run(self, device_index: int) -> None:
        backbone = self.backbones[device_index]
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            live = [it for it in batch if not it.request.future.done()]
            if not live:
                continue
            try:
                self._forward(device_index, backbone, live)
            except Exception as exc:  # one bad batch fails its requests, never the worker
                self._isolate(device_index, backbone, live, exc)

    def _isolate(self, device_index: int, backbone: Backbone, items: list[_Item], exc: Exception) -> None:
        """A forward failed: run each request's rows again on their own, so a failing row fails only
        the request it belongs to, never the co-batched requests of other clients and tasks."""
        groups: dict[int, list[_Item]] = {}
        for it in items:
            if not it.request.future.done():
                groups.setdefault(id(it.request), []).append(it)
        if len(groups) <= 1:
            log.warning("batch forward failed: %s: %s", type(exc).__name__, exc)
            for group in groups.values():
                group[0].request.fail(exc)
            return
        log.warning(
            "batch forward of %d requests failed (%s: %s); retrying each request alone",
            len(groups),
            type(exc).__name__,
            exc,
        )
        with self._cond:
            self._isolations += 1
        for group in groups.values():
            try:
                self._forward(device_index, backbone, group)
            except Exception as own:
                log.warning(
                    "request of %d rows failed on its own: %s: %s", len(group), type(own).__name__, own
                )
                group[0].request.fail(own)

    def _on_device(self, device_index: int, task: ServingTask, backbone: Backbone) -> ServingTask:
        ref = task.kv if task.kv is not None else task.prompt
        device = backbone.device
        if ref is None or ref.device == device:
            return task
        memo = self._moved[device_index]
        hit = memo.get(id(task))
        if hit is not None and hit[0] is task:
            return hit[1]
        moved = task.to(device)
        if len(memo) > 1024:
            memo.clear()
        memo[id(task)] = (task, moved)
        return moved

    def _forward(self, device_index: int, backbone: Backbone, items: list[_Item]) -> None:
        # every served task runs on the shared frozen backbone (the API cannot make a fully
        # fine-tuned task; those are served by `prompthub predict` through engine.batch.task_forward)
        items = sorted(items, key=lambda it: it.length)
        pad = backbone.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            tasks = [self._on_device(device_index, it.task, backbone) for it in items]
            overhead = self._overhead_tokens(backbone)
            for lo, hi in length_buckets([it.length for it in items], overhead):
                part = items[lo:hi]
                batch = collate(
                    [_inputs(it.features) for it in part], pad, backbone.device, self._multiple(backbone)
                )
                self._deliver(part, mixed_forward(backbone, tasks[lo:hi], batch))
                self._forwards += 1

    def _multiple(self, backbone: Backbone) -> int:
        if self.pad_length_multiple is not None:
            return max(1, int(self.pad_length_multiple))
        return 1 if backbone.device.type == "cpu" else 16

    def _overhead_tokens(self, backbone: Backbone) -> float:
        if self.bucket_overhead_tokens is not None:
            return float(self.bucket_overhead_tokens)
        return 16.0 if backbone.device.type == "cpu" else 2048.0

    @staticmethod
    def _deliver(items: list[_Item], logits: Sequence[Tensor]) -> None:
        for it, row in zip(items, logits, strict=True):
            row = row[: it.length] if row.dim() >= 2 else row
            it.request.deliver(it.index, row.detach().float().cpu())


def _inputs(features: dict) -> dict:
    """Only what the backbone reads: rows of different task types carry different extras."""
    return {"input_ids": features["input_ids"], "token_type_ids": features.get("token_type_ids")}
