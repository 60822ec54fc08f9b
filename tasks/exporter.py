"""The Celery worker's own ``/metrics``: hmdp metrics that only workers produce.

Why not only Flower: Flower's /metrics (scraped by Prometheus) covers what Celery
events tell — task counts by state, runtimes, retries, workers online — but not
hmdp's business metrics recorded inside tasks (hmdp_order_tasks_total by result,
hmdp_order_task_seconds, recovered and dead-lettered orders, the pool gauges of
the worker processes). Those live in the pool's child processes, so the launcher
sets ``PROMETHEUS_MULTIPROC_DIR`` for the worker, this module wipes it when the
worker starts (before the pool forks) and serves the aggregate from the main
process on ``HMDP_WORKER_METRICS_PORT`` (0 = off). One worker per directory and port.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_ready

from metrics import track_pool
from services import Services
from settings import Settings

log = logging.getLogger(__name__)


def wipe_multiproc_dir(path: Path) -> None:
    """Remove the sample files of a previous run (counters would add up across runs)."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.glob("*.db"):
        entry.unlink(missing_ok=True)


def start_exporter(settings: Settings) -> Any:
    """Serve the multiprocess aggregate over HTTP; returns the server (or None if off)."""
    if not settings.worker_metrics_port or settings.prometheus_multiproc_dir is None:
        return None
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(settings.prometheus_multiproc_dir))
    try:
        server, _thread = start_http_server(
            settings.worker_metrics_port, settings.worker_metrics_host, registry=registry
        )
    except OSError as exc:  # port taken: the worker still works, without its exporter
        log.error(
            "worker metrics exporter not started on %s: %s", settings.worker_metrics_port, exc
        )
        return None
    log.info(
        "worker metrics on http://%s:%s/metrics",
        settings.worker_metrics_host,
        settings.worker_metrics_port,
    )
    return server


def install_worker_metrics(settings: Settings, services: Services) -> None:
    """Connect the worker signals (they fire only in ``celery worker`` processes)."""
    multiproc = settings.prometheus_multiproc_dir

    def _on_worker_init(**_: Any) -> None:
        if multiproc is not None:
            wipe_multiproc_dir(multiproc)

    def _on_worker_ready(**_: Any) -> None:
        start_exporter(settings)

    def _on_child_start(**_: Any) -> None:
        track_pool(services.db.engine.pool)

    def _on_child_exit(**_: Any) -> None:
        if multiproc is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), str(multiproc))

    worker_init.connect(_on_worker_init, weak=False, dispatch_uid="hmdp.metrics.worker_init")
    worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="hmdp.metrics.worker_ready")
    worker_process_init.connect(
        _on_child_start, weak=False, dispatch_uid="hmdp.metrics.child_start"
    )
    worker_process_shutdown.connect(
        _on_child_exit, weak=False, dispatch_uid="hmdp.metrics.child_exit"
    )
