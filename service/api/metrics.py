"""`/metrics` in the Prometheus text format.

HTTP requests are counted and timed by prometheus-fastapi-instrumentator. The work is read from the database at
scrape time by `ServiceCollector` (jobs by state, queue depth, trials finished and per second, workers, export and
heal durations): the workers are separate processes, often on other machines, and the database is where all of
them record what they do, so one scrape of the API covers them all, with no shared directory or worker port."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Sequence

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator

from prunesearch.service.db import session_scope
from prunesearch.service.stats import RATE_WINDOW_S, ServiceStats, read_stats

log = logging.getLogger(__name__)

# Exports take seconds (small models) to hours (a long heal).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)


def install(app: FastAPI, db_url: str) -> CollectorRegistry:
    """Instrument `app`'s requests and serve `/metrics` from a registry of its own (each app has one, so tests
    may build many)."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(db_url))
    instrumentator = Instrumentator(
        registry=registry,
        excluded_handlers=["/metrics"],
        should_exclude_streaming_duration=True,  # an event stream lasts as long as its job
    )
    # documented as what it is, Prometheus' text format (not the API's JSON)
    instrumentator.instrument(app).expose(
        app, tags=["system"], summary="Prometheus metrics", response_class=PlainTextResponse
    )
    return registry


class ServiceCollector(Collector):
    """The service's work, read from the database on each scrape (nothing when the database is unreachable:
    `prunesearch_up` says so)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def collect(self) -> Iterator[Metric]:
        try:
            with session_scope(self.db_url) as session:
                stats = read_stats(session)
        except Exception:
            log.warning("metrics: the database could not be read", exc_info=True)
            yield GaugeMetricFamily("prunesearch_database_up", "Whether the last scrape read the database", value=0)
            return
        yield GaugeMetricFamily("prunesearch_database_up", "Whether the last scrape read the database", value=1)
        yield from _work_metrics(stats)


def _work_metrics(stats: ServiceStats) -> Iterator[Metric]:
    yield _labelled("prunesearch_jobs", "Search jobs by state", "status", stats.jobs)
    yield _labelled("prunesearch_exports", "Exports by state", "status", stats.exports)
    queue = {"job": stats.jobs["queued"], "export": stats.exports["queued"]}
    yield _labelled("prunesearch_queue_depth", "Jobs and exports waiting for a worker", "kind", queue)
    yield GaugeMetricFamily(
        "prunesearch_active_workers", "Workers on running jobs (a worker joins one job at a time)", stats.active_workers
    )
    yield CounterMetricFamily(
        "prunesearch_trials_finished", "Trials finished, over every job still stored", value=stats.trials_finished
    )
    yield GaugeMetricFamily(
        "prunesearch_trials_per_second",
        f"Trials finished per second, over the last {RATE_WINDOW_S:.0f} s",
        value=stats.trials_per_second,
    )
    yield _histogram("prunesearch_export_duration_seconds", "Succeeded exports, claim to finish", stats.export_seconds)
    yield _histogram("prunesearch_heal_duration_seconds", "Heals of healed exports, end to end", stats.heal_seconds)


def _labelled(name: str, documentation: str, label: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in counts.items():
        family.add_metric([key], value)
    return family


def _histogram(name: str, documentation: str, samples: Sequence[float]) -> HistogramMetricFamily:
    ordered = sorted(samples)
    buckets = [(str(bound), bisect.bisect_right(ordered, bound)) for bound in DURATION_BUCKETS]
    buckets.append(("+Inf", len(ordered)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=sum(ordered))
