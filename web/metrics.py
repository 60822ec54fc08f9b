"""``GET /metrics``: HTTP metrics by route, hmdp's own metrics, and live Redis/DB readings.

* HTTP: the request histogram and counter by URL rule (``/shop/<shop_id>``),
  never the raw path (:class:`web.exchange.HttpMetrics`, recorded by the one
  finish step of Flask's hooks and the fast paths alike); unmatched paths
  share the label ``<unmatched>``, and scrapes are not counted.
* With several worker processes the launcher sets ``PROMETHEUS_MULTIPROC_DIR``
  (deploy/web_server.py: a fresh directory per instance, wiped at start); every
  worker's samples are then aggregated from that directory, so a scrape counts
  ALL of the instance's traffic whichever worker serves it. A dead worker's live
  gauges are dropped by its replacement (:func:`drop_dead_processes`; granian's
  master has no hook for it, gunicorn's ``child_exit`` does it too) and by a
  worker itself when it exits cleanly.
* Stream length, pending, lag/backlog and dead letters are read from Redis at
  scrape time (:class:`StreamCollector`), summed over the orders streams of the
  vouchers that may hold any (:func:`cache.stream_vouchers.for_readers`: one
  database query, one SMEMBERS) and the legacy stream: correct whichever process
  last touched a stream, cheap (one pipeline: XLEN x2 and XINFO GROUPS per
  stream, one round trip per node) and failure-tolerant: with Redis down the
  scrape still answers 200 with ``hmdp_redis_up 0``; with the database down it
  reads the vouchers it read last.
* Database pool usage comes from pool events (:func:`metrics.track_pool`).

``/metrics`` needs no login and is in no rate-limit table (web/ratelimit.py).
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from flask import Flask, Response, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from cache import order_stream, reconcile, stream_vouchers
from cache.connection import UNAVAILABLE, Client, connect
from cache.server import process_alive
from metrics import track_pool
from services import Services
from settings import Settings

from .contract import contract
from .exchange import HttpMetrics

log = logging.getLogger(__name__)


Vouchers = Callable[[Client], list[int]]  # the vouchers whose streams a scrape reads


class StreamCollector(Collector):
    """Reads the order streams' state from Redis at scrape time."""

    def __init__(
        self, settings: Settings, redis_url: Callable[[], str], vouchers: Vouchers | None = None
    ):
        self.settings = settings
        self._redis_url = redis_url
        self._vouchers = vouchers
        self._known: list[int] = []  # what ``vouchers`` answered last
        self._client: Client | None = None

    def client(self) -> Client:
        """A small client of its own with short timeouts: a hung Redis must not hang scrapes."""
        if self._client is None:
            limit = self.settings.metrics_redis_timeout  # never longer than any other client's
            short = self.settings.with_(
                redis_socket_timeout=min(self.settings.redis_socket_timeout, limit),
                redis_connect_timeout=min(self.settings.redis_connect_timeout, limit),
            )
            self._client = connect(self._redis_url(), short, max_connections=4)
        return self._client

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("hmdp_redis_up", "1 if the metrics scrape could read Redis")
        try:
            readings = self._read()
        except (*UNAVAILABLE, redis.RedisError, OSError, RuntimeError, ValueError) as exc:
            log.warning("metrics: cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        drift = readings.pop()
        for name, doc, value in readings:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        yield drift

    def voucher_ids(self, client: Client) -> list[int]:
        """The vouchers to read; those read last when the database cannot say."""
        if self._vouchers is None:
            return []
        try:
            self._known = self._vouchers(client)
        except (*UNAVAILABLE, redis.RedisError, OSError):
            raise  # Redis: the scrape says hmdp_redis_up 0
        except Exception as exc:  # the database: the gauges still read what they can
            log.warning("metrics: vouchers unknown, reading those of the last scrape: %s", exc)
        return self._known

    def _read(self) -> list[Any]:
        s = self.settings
        client = self.client()
        streams = [order_stream.voucher_stream(s, v) for v in self.voucher_ids(client)]
        streams += order_stream.legacy_of(client, s)
        found = client.hgetall(reconcile.FOUND_KEY)
        stats = order_stream.stream_stats(client, streams)
        return [
            ("hmdp_orders_stream_length", "Entries in the orders streams (XLEN)", stats.length),
            ("hmdp_orders_pending", "Entries delivered to the group but not acked", stats.pending),
            ("hmdp_orders_lag", "Entries not yet delivered to the consumer group", stats.lag),
            (
                "hmdp_orders_backlog",
                "Orders waiting: not yet delivered plus delivered but unacked",
                stats.pending + stats.lag,
            ),
            (
                "hmdp_orders_dead_letters",
                "Entries in the dead-letter streams (XLEN)",
                stats.dead_letters,
            ),
            self._drift(found),
        ]

    @staticmethod
    def _drift(found: dict[str, str]) -> GaugeMetricFamily:
        """Per live voucher (a handful: the one id label we allow), what reconciliation repaired."""
        family = GaugeMetricFamily(
            "hmdp_seckill_drift",
            "Gate state Redis had lost, found and repaired by the last reconciliations "
            "(buyers + ids + units of stock; held 15 min after a repair)",
            labels=["voucher"],
        )
        for voucher, drift in sorted(reconcile.parse_found(found).items()):
            family.add_metric([str(voucher)], drift)
        return family


class _Forward(Collector):
    """Exposes another registry's metrics through this one (single-process mode)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def exposition_registry(
    settings: Settings, http_registry: CollectorRegistry, extra: Iterable[Collector]
) -> CollectorRegistry:
    """The registry a scrape renders.

    Multiprocess: everything the instance's processes wrote to the shared
    directory, aggregated. Single process: this process's default registry
    (metrics.py, process stats) plus the app's HTTP metrics.
    """
    registry = CollectorRegistry()
    if settings.prometheus_multiproc_dir is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=str(settings.prometheus_multiproc_dir))
    else:
        registry.register(_Forward(REGISTRY))
        registry.register(_Forward(http_registry))
    for collector in extra:
        registry.register(collector)
    return registry


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def drop_dead_processes(path: Path) -> set[int]:
    """Remove the live gauges ("liveall"/"livesum"...) of processes that no longer exist.

    A worker that crashed (SIGKILL, OOM) never cleaned up; its replacement calls
    this at start, so /metrics stops showing the dead pid's DB pool series.
    Counters and histograms stay: the requests it served did happen.
    """
    from prometheus_client import multiprocess

    dead = set()
    for file in path.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.match(file.name)
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))
    return dead


def _drop_own_live_gauges(path: str, pid: int) -> None:
    """At a clean exit: this process's live gauges go with it (forked children only)."""
    if os.getpid() == pid:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def register_metrics(app: Flask, services: Services) -> HttpMetrics:
    """Serve ``/metrics`` for this app; returns the HTTP metrics its requests are counted in."""
    settings = services.settings
    # A registry per app: the HTTP metrics must not collide in the process-wide
    # default registry when a process (a test run) builds several apps.
    http = HttpMetrics(CollectorRegistry())
    stream = StreamCollector(
        settings,
        lambda: services.redis_url,
        lambda client: stream_vouchers.for_readers(client, services.db, settings),
    )
    registry = exposition_registry(settings, http.registry, [stream])
    if settings.prometheus_multiproc_dir is not None:
        drop_dead_processes(settings.prometheus_multiproc_dir)
        multiprocessing.util.Finalize(
            None,
            _drop_own_live_gauges,
            args=(str(settings.prometheus_multiproc_dir), os.getpid()),
            exitpriority=0,  # after the order dispatcher's flush (10)
        )
    track_pool(services.db.engine.pool)

    @contract(content={"text/plain": {"type": "string"}})
    def metrics_view() -> Response:
        """Prometheus metrics of this process (or of all, in multiprocess mode)."""
        encoder, content_type = choose_encoder(request.headers.get("Accept"))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics_view, methods=["GET"])
    app.extensions["hmdp_metrics"] = http
    return http
