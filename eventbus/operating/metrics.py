"""Prometheus metrics for `listen --metrics-port` (prometheus-client, multiprocess mode).

Workers count what they do into files under PROMETHEUS_MULTIPROC_DIR; the supervisor serves
/metrics, adding at scrape time what only it or the database knows: workers alive, the
backlog per channel and the age of the oldest due event. Until `enable()` is called every
recording function is a no-op, so the engine runs the same without prometheus.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

_metrics: dict[str, Any] = {}


def enable() -> str:
    """Turn metrics on for this process and the workers it will fork. Returns the data dir."""
    directory = tempfile.mkdtemp(prefix="eventbus-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # read when metrics are created
    from prometheus_client import Counter, Histogram

    labels = ["channel"]
    _metrics.update(
        handled=Counter("eventbus_events_handled", "Events handled (done)", labels),
        failed=Counter("eventbus_events_failed", "Attempts that failed", labels),
        dead=Counter("eventbus_events_dead", "Events that died", labels),
        retried=Counter("eventbus_events_retried", "Attempts after the first", labels),
        duration=Histogram(
            "eventbus_handler_duration_seconds",
            "Handler run time",
            labels,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
        ),
        reconnects=Counter("eventbus_reconnects", "Reconnects after a lost connection"),
    )
    return directory


def observe(channel: str, status: str, attempt: int, seconds: float) -> None:
    if not _metrics:
        return
    if status == "done":
        _metrics["handled"].labels(channel).inc()
    else:
        _metrics["failed"].labels(channel).inc()
        if status == "dead":
            _metrics["dead"].labels(channel).inc()
    if attempt > 1:
        _metrics["retried"].labels(channel).inc()
    _metrics["duration"].labels(channel).observe(seconds)


def reconnected() -> None:
    if _metrics:
        _metrics["reconnects"].inc()


def worker_exited(pid: int) -> None:
    if _metrics:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def serve(
    port: int,
    workers_alive: Callable[[], int],
    backlog: Callable[[], dict[str, tuple[int, float]]],
    unhandled: Callable[[], dict[str, int]] = dict,
    held_back: Callable[[], tuple[float, int]] = lambda: (0.0, 0),
    queue_bytes: Callable[[], int] = lambda: 0,
) -> None:
    """Serve /metrics on `port` from the supervisor, in a background thread.

    `unhandled`: runnable events per channel that no live listener handles (a deploy
    half done, a listener missing its handler modules); they wait, so they need an alert.
    `held_back`: seconds and xids the oldest snapshot has held back cleanup (a dead
    tuple's removal), so an alert fires before the event table bloats.
    `queue_bytes`: the size of the queue's slots, bounded while they rotate.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.multiprocess import MultiProcessCollector

    class Live:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            yield GaugeMetricFamily(
                "eventbus_workers_alive", "Worker processes alive", value=workers_alive()
            )
            count = GaugeMetricFamily(
                "eventbus_backlog",
                "Runnable events (pending or failed awaiting retry)",
                labels=["channel"],
            )
            age = GaugeMetricFamily(
                "eventbus_oldest_due_seconds",
                "How long the oldest due event has waited",
                labels=["channel"],
            )
            try:
                stats = backlog()
            except Exception:  # the database is down: report workers, not a scrape error
                stats = {}
            for channel, (n, seconds) in sorted(stats.items()):
                count.add_metric([channel], n)
                age.add_metric([channel], seconds)
            yield count
            yield age
            yield self.unhandled_gauge()
            yield from self.horizon_gauges()
            yield from self.queue_gauge()

        def queue_gauge(self) -> Iterator[GaugeMetricFamily]:
            try:
                size = queue_bytes()
            except Exception:  # the database is down, as above
                return
            yield GaugeMetricFamily(
                "eventbus_queue_bytes",
                "Size of the queue of pending and failed events (tables, indexes): bounded "
                "while its slots rotate",
                value=size,
            )

        def horizon_gauges(self) -> Iterator[GaugeMetricFamily]:
            try:
                seconds, xids = held_back()
            except Exception:  # the database is down, as above
                return
            yield GaugeMetricFamily(
                "eventbus_oldest_snapshot_seconds",
                "How long the oldest snapshot has held back vacuum (sessions, prepared "
                "transactions)",
                value=seconds,
            )
            yield GaugeMetricFamily(
                "eventbus_oldest_xmin_age_xids",
                "Transactions since the oldest xmin that holds back vacuum (slots included)",
                value=xids,
            )

        def unhandled_gauge(self) -> GaugeMetricFamily:
            gauge = GaugeMetricFamily(
                "eventbus_unhandled_events",
                "Runnable events of channels that no live listener handles",
                labels=["channel"],
            )
            try:
                waiting = unhandled()
            except Exception:  # the database is down, as above
                waiting = {}
            for channel, n in sorted(waiting.items()):
                gauge.add_metric([channel], n)
            return gauge

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(Live())
    start_http_server(port, addr="0.0.0.0", registry=registry)
