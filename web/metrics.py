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
  scrape time (:class:`StreamCollector`): correct whichever process last
  touched the stream, cheap (one pipeline: XLEN x2, XINFO GROUPS) and failure-tolerant: with
  Redis down the scrape still answers 200 with ``hmdp_redis_up 0``.
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

from cache import reconcile
from cache.connection import Client, connect
from cache.server import process_alive
from metrics import track_pool
from services import Services
from settings import Settings

from .contract import contract
from .exchange import HttpMetrics

log = logging.getLogger(__name__)


class StreamCollector(Collector):
    """Reads the order stream's state from Redis at scrape time."""

    def __init__(self, settings: Settings, redis_url: Callable[[], str]):
        self.settings = settings
        self._redis_url = redis_url
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
        except (redis.RedisError, OSError, RuntimeError, ValueError) as exc:
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

    def _read(self) -> list[Any]:
        s = self.settings
        client = self.client()
        pipe = client.pipeline(transaction=False)
        pipe.xlen(s.order_stream)
        pipe.xlen(s.order_dead_letter_stream)
        pipe.xinfo_groups(s.order_stream)
        pipe.hgetall(reconcile.FOUND_KEY)
        length, dead, groups, found = pipe.execute(raise_on_error=False)
        if isinstance(found, Exception):
            raise found
        if isinstance(length, Exception):
            raise length
        if isinstance(dead, Exception):
            raise dead
        if isinstance(groups, redis.ResponseError):  # no such stream yet
            groups = []
        elif isinstance(groups, Exception):
            raise groups
        group = next((g for g in groups if g.get("name") == s.order_group), None)
        if group is None:  # nobody consumes yet: everything is undelivered
            pending, lag = 0, int(length)
        else:
            pending = int(group.get("pending") or 0)
            lag = self._lag(group, int(length), pending)
        return [
            ("hmdp_orders_stream_length", "Entries in the orders stream (XLEN)", length),
            ("hmdp_orders_pending", "Entries delivered to the group but not acked", pending),
            ("hmdp_orders_lag", "Entries not yet delivered to the consumer group", lag),
            (
                "hmdp_orders_backlog",
                "Orders waiting: not yet delivered plus delivered but unacked",
                pending + lag,
            ),
            ("hmdp_orders_dead_letters", "Entries in the dead-letter stream (XLEN)", dead),
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

    @staticmethod
    def _lag(group: dict[str, Any], length: int, pending: int) -> int:
        """Entries the group has not been given yet.

        Redis >= 7 reports it, unless deletions make it unknowable (None). Then,
        and on Redis 6.2, it is XLEN - pending: exact here, because a settled
        order's entry is acknowledged AND deleted (cache/order_stream.py), so the
        stream holds only pending and undelivered entries. O(1) either way.
        """
        lag = group.get("lag")
        if lag is not None:
            return int(lag)
        return max(length - pending, 0)


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
    stream = StreamCollector(settings, lambda: services.redis_url)
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
