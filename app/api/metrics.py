"""Prometheus metrics, one registry per app (so several apps can live in one process).

Request counts and latencies are recorded by a middleware; queue depth, batch sizes, cache
counters and jobs by state are read from the hub and the database at scrape time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from app.db.jobs import job_counts
from app.db.models import JOB_STATES
from app.names import is_task_name
from app.serving.hub import Hub

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_TASK = "_unknown"
EDGE_ROUTE = "_edge"  # requests refused before routing (auth, Host/Origin, rate limits)


class HubCollector(Collector):
    def __init__(self, hub: Hub, sessionmaker: Callable[[], Session]) -> None:
        self.hub = hub
        self.sessionmaker = sessionmaker

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        batcher = hub.batcher
        ready = GaugeMetricFamily("prompthub_ready", "1 when the backbone is loaded and serving")
        ready.add_metric([], 1.0 if hub.ready else 0.0)
        yield ready
        depth = GaugeMetricFamily("prompthub_queue_rows", "rows waiting in the batcher queue")
        depth.add_metric([], float(batcher.queue_depth()) if batcher else 0.0)
        yield depth
        if batcher is not None:
            yield _batch_histogram(batcher.stats().batch_sizes)
        cs = hub.cache.stats()
        for name, doc, value in (
            ("prompthub_cache_hits", "task cache hits", cs.hits),
            ("prompthub_cache_misses", "task cache misses (loads from the store)", cs.misses),
            ("prompthub_cache_evictions", "task cache evictions", cs.evictions),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            yield c
        for name, doc, value in (
            ("prompthub_cache_entries", "task versions held on the device", cs.entries),
            ("prompthub_cache_bytes", "bytes of task versions held on the device", cs.bytes_used),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        jobs = GaugeMetricFamily("prompthub_jobs", "training jobs by state", labels=["state"])
        for state, n in self._job_counts().items():
            jobs.add_metric([state], float(n))
        yield jobs

    def _job_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        try:
            with self.sessionmaker() as s:
                counts.update(job_counts(s))
        except Exception:  # a scrape must not fail because the database hiccups
            log.warning("job counts unavailable for /metrics", exc_info=True)
        return counts


def _batch_histogram(sizes: dict[int, int]) -> HistogramMetricFamily:
    buckets = []
    for bound in BATCH_BUCKETS:
        buckets.append((str(float(bound)), float(sum(n for size, n in sizes.items() if size <= bound))))
    total = float(sum(sizes.values()))
    buckets.append(("+Inf", total))
    h = HistogramMetricFamily("prompthub_batch_size", "rows per backbone forward")
    h.add_metric([], buckets, sum_value=float(sum(size * n for size, n in sizes.items())))
    return h


class ApiMetrics:
    def __init__(self, hub: Hub, sessionmaker: Callable[[], Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "prompthub_requests",
            "HTTP requests by route, task and status",
            ["route", "task", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "prompthub_request_latency_seconds",
            # no task label: with thousands of tasks a per-task histogram is ~15 series a task,
            # which makes every scrape (and the server's memory) grow with the task count
            "HTTP request latency by route and status",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # per task, the count and sum only (two series a task and route, no buckets): the mean
        # latency of each task, as the console's hub page shows it
        self.task_latency = Summary(
            "prompthub_task_request_latency_seconds",
            "HTTP request latency of routes that name a task, by route and task (count and sum)",
            ["route", "task"],
            registry=self.registry,
        )
        self.registry.register(HubCollector(hub, sessionmaker))
        # task names seen answering 2xx on a route with {task}: only tasks that exist(ed) get a label
        # of their own, so random names from clients (401/403/404/422/429) cannot add series
        self.known_tasks: set[str] = set()

    def task_label(self, task: str, status: int) -> str:
        if not task:
            return ""
        if 200 <= status < 300 and is_task_name(task):
            self.known_tasks.add(task)
            return task
        return task if task in self.known_tasks else UNKNOWN_TASK

    def observe(self, route: str, task: str, status: int, seconds: float) -> None:
        self.requests.labels(route, task, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)
        if task:
            self.task_latency.labels(route, task).observe(seconds)

    def refused(self, status: int) -> None:
        """A request the edge refused before routing (no route or task label: bounded by status)."""
        self.requests.labels(EDGE_ROUTE, "", str(status)).inc()

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI, metrics: ApiMetrics) -> None:
    @app.middleware("http")
    async def record(request: Request, call_next):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", None)
            if path is not None and path != "/metrics":
                task = metrics.task_label(request.path_params.get("task", ""), status)
                metrics.observe(path, task, status, time.perf_counter() - start)
