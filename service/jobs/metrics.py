"""Prometheus metrics of the service, for ``GET /metrics``.

Job figures are read from the database at scrape time by a custom collector — the database is the truth, and
so every API replica reports the same numbers whichever executor runs the jobs:

* ``sepconv_jobs{status}``: jobs by status;
* ``sepconv_queue_depth``: queued jobs;
* ``sepconv_job_duration_seconds{status}``: a histogram of run times (start to finish) of succeeded and failed
  jobs.

The API process adds its own counter, ``sepconv_upload_bytes_total`` (file bytes received). Each app has its
own registry, so several apps in one process (tests) do not collide. This module does not serve HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from . import crud

__all__ = ["DURATION_BUCKETS", "JobsCollector", "Metrics"]

#: Upper bounds (seconds) of the duration histogram's buckets.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class JobsCollector(Collector):
    """Reads job counts and durations from the database at every scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        counts = crud.count_by_status(self.engine)
        jobs = GaugeMetricFamily("sepconv_jobs", "Jobs by status.", labels=["status"])
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("sepconv_queue_depth", "Jobs waiting for a worker.", value=counts["queued"])
        hist = HistogramMetricFamily("sepconv_job_duration_seconds",
                                     "Run time of finished jobs, from start to finish.", labels=["status"])
        for status, (cumulative, count, total) in crud.duration_stats(self.engine, DURATION_BUCKETS).items():
            buckets = [(f"{b:g}", c) for b, c in zip(DURATION_BUCKETS, cumulative, strict=True)]
            hist.add_metric([status], [*buckets, ("+Inf", count)], total)
        yield hist


class Metrics:
    """One app's metrics: the database collector and the API process's own counters."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(JobsCollector(engine))
        self.upload_bytes = Counter("sepconv_upload_bytes", "Bytes of model and inputs files received.",
                                    registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition (queries the database)."""
        return generate_latest(self.registry)
