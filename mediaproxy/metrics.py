"""Prometheus metrics (prometheus-client), shared across worker processes in multi-process mode.

The supervisor sets PROMETHEUS_MULTIPROC_DIR before starting workers, so every worker's values live in files
there and `/metrics` on any worker reports the sum; a single process keeps them in memory.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("mediaproxy_requests_total", "Requests answered", ["service", "status"])
LATENCY = Histogram("mediaproxy_request_seconds", "Time until the response headers", ["service"],
                    buckets=_LATENCY_BUCKETS)
CACHE = Counter("mediaproxy_cache_lookups_total", "Cache lookups by tier (memory, disk, origin) and outcome",
                ["tier", "outcome"])
QUEUE = Gauge("mediaproxy_work_jobs", "Jobs admitted to a work pool and not finished", ["pool"],
              multiprocess_mode="livesum")
REJECTED = Counter("mediaproxy_work_rejected_total", "Jobs refused or dropped because a pool was full", ["pool"])
UPSTREAM_BYTES = Counter("mediaproxy_upstream_bytes_total", "Bytes of originals fetched from the upstream")
UPSTREAM_SECONDS = Histogram("mediaproxy_upstream_fetch_seconds", "Time to fetch or revalidate an original",
                             buckets=_LATENCY_BUCKETS)
UPSTREAM_ERRORS = Counter("mediaproxy_upstream_errors_total", "Upstream failures", ["kind"])
NOTIFICATIONS = Counter("mediaproxy_notifications_total", "Kaltura notifications received, by type and outcome "
                        "(purged, withheld, released, duplicate, ignored; refused, malformed, too_large)",
                        ["type", "outcome"])
PURGES = Counter("mediaproxy_purges_total", "Entries purged from the node's caches, by who asked (notification, "
                 "operator, console)", ["source"])
WORKER_RESTARTS = Counter("mediaproxy_worker_restarts_total", "Workers restarted by the supervisor")


@functools.cache
def child(metric, *labels: str):
    """A labelled child of a metric, made once (`metric.labels(...)` costs a lock and a lookup on every call, and
    hot requests count three of them)."""
    return metric.labels(*labels)


class Tally:
    """Counts and latencies of every answer and cache lookup, kept in this process and added to their metrics in
    one go (every FLUSH_SECONDS, and before this process answers /metrics): in multi-process mode every increment
    writes a shared file under a lock, which cost a hot answer about as much as the rest of its work. So another
    worker's requests reach /metrics within FLUSH_SECONDS."""

    FLUSH_SECONDS = 0.5

    def __init__(self) -> None:
        self._counts: collections.Counter = collections.Counter()  # counter child → increments
        self._latencies: dict = {}  # histogram child → ([count per bucket], sum)
        self._levels: dict = {}  # gauge child → what reads its level (set at every flush)

    def level(self, gauge, read: Callable[[], float]) -> None:
        """Keep `gauge` at `read()`, read at every flush (a level that changes at every job, e.g. jobs pending)."""
        self._levels[gauge] = read

    def count(self, counter) -> None:
        self._counts[counter] += 1

    def observe(self, histogram, seconds: float) -> None:
        buckets, total = self._latencies.get(histogram) or ([0] * len(histogram._upper_bounds), 0.0)
        buckets[bisect.bisect_left(histogram._upper_bounds, seconds)] += 1  # le: the first bound >= the value
        self._latencies[histogram] = buckets, total + seconds

    def flush(self) -> None:
        counts, self._counts = self._counts, collections.Counter()
        for counter, increments in counts.items():
            counter.inc(increments)
        for gauge, read in self._levels.items():
            gauge.set(read())
        latencies, self._latencies = self._latencies, {}
        for histogram, (buckets, total) in latencies.items():  # what Histogram.observe does, n at a time
            histogram._sum.inc(total)
            for bucket, observed in zip(histogram._buckets, buckets):
                if observed:
                    bucket.inc(observed)

    async def flush_every(self) -> None:
        """Until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(self.FLUSH_SECONDS)
                self.flush()
        finally:
            self.flush()


TALLY = Tally()


def exposition() -> tuple[bytes, str]:
    """The metrics text and its Content-Type."""
    TALLY.flush()
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters keep counting in the sum)."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(pid)
