"""A worker's own Prometheus metrics, served on `prunesearch worker --metrics-port PORT` (off by default).

The API's `/metrics` already counts the work of every worker from the database; this endpoint adds what only the
process knows: how long its trials take, what it is busy with, and the process itself (CPU, memory, open files).
Each worker has its own registry and port, so workers on one machine need distinct ports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

# Trials take milliseconds (a fake backend) to minutes (a large model on a CPU); exports seconds to hours.
TRIAL_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
EXPORT_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)

TRIALS = Counter("prunesearch_worker_trials", "Trials this worker finished", registry=REGISTRY)
TRIAL_SECONDS = Histogram(
    "prunesearch_worker_trial_seconds",
    "Time from the previous trial (or joining the job) to each trial's record",
    buckets=TRIAL_BUCKETS,
    registry=REGISTRY,
)
EXPORTS = Counter("prunesearch_worker_exports", "Exports this worker ended, by outcome", ["status"], registry=REGISTRY)
EXPORT_SECONDS = Histogram(
    "prunesearch_worker_export_seconds",
    "Exports this worker wrote, end to end",
    buckets=EXPORT_BUCKETS,
    registry=REGISTRY,
)
HEAL_SECONDS = Histogram(
    "prunesearch_worker_heal_seconds", "Heals of healed exports, end to end", buckets=EXPORT_BUCKETS, registry=REGISTRY
)
BUSY = Gauge("prunesearch_worker_busy", "What the worker is doing now (1: busy)", ["work"], registry=REGISTRY)
for _work in ("job", "export"):
    BUSY.labels(_work).set(0)


def serve_metrics(port: int, host: str = "127.0.0.1"):
    """Serve the registry on `host:port` in a daemon thread; returns (server, thread)."""
    return start_http_server(port, addr=host, registry=REGISTRY)


@contextmanager
def busy(work: str) -> Iterator[None]:
    """Marks the worker busy with `work` ("job" or "export") while the block runs."""
    with BUSY.labels(work).track_inprogress():
        yield


class TrialClock:
    """Times the trials of one job as this worker sees them: each one from the previous record."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def trial_done(self) -> None:
        now = time.monotonic()
        TRIALS.inc()
        TRIAL_SECONDS.observe(now - self.last)
        self.last = now


def export_done(status: str, seconds: float, heal_seconds: float | None) -> None:
    EXPORTS.labels(status).inc()
    if status == "succeeded":
        EXPORT_SECONDS.observe(seconds)
        if heal_seconds is not None:
            HEAL_SECONDS.observe(heal_seconds)
