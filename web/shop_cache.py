"""The app's shop region and the answer of a cached shop, for Flask's route and the fast path.

``GET /shop/{id}`` is written once: :func:`shop_answer` is what both the shops
blueprint (any read of the region) and the WSGI fast path (a near-cache hit,
web/fastpath.py) answer for a shop's JSON text: the UV visit, then the
envelope around the text as it is (never decoded and encoded again).
"""

from __future__ import annotations

import logging
import threading

from flask import Flask, current_app

from cache.region import CacheRegion
from cache.shops import shop_near_cache, shop_region
from services import Services

from .envelope import ok_bytes
from .exchange import Exchange
from .visits import record_visit

REFRESH_TASK = "tasks.cache.refresh_shop"
CONVERGE_TASK = "tasks.cache.converge_shop"
_EXTENSION = "hmdp_shop_cache"

log = logging.getLogger(__name__)


class _RegionHolder:
    """Builds the app's region lazily: creating the app must not connect anywhere."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.region: CacheRegion | None = None

    def get(self, app: Flask) -> CacheRegion:
        region = self.region
        if region is not None:
            return region
        with self.lock:
            if self.region is None:
                svc: Services = app.extensions["hmdp"]
                sender = app.extensions["hmdp_celery"]

                def refresher(key: str) -> None:
                    sender.send_task(REFRESH_TASK, args=[int(key)])

                self.region = shop_region(
                    svc.redis,
                    svc.db,
                    svc.settings,
                    refresher=refresher,
                    near=shop_near_cache(svc.redis, svc.settings),
                )
            return self.region


def shop_cache() -> CacheRegion:
    """This app's shop region."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions[_EXTENSION].get(app)


def shop_region_holder(app: Flask) -> _RegionHolder:
    """The holder of the app's region: ``.region`` is None until a request built it."""
    return app.extensions[_EXTENSION]


def install(app: Flask) -> None:
    """Give the app its (not yet built) shop region."""
    app.extensions[_EXTENSION] = _RegionHolder()


def shop_answer(app: Flask, exchange: Exchange, shop_id: int, text: str) -> bytes:
    """The body of a found shop, its visit recorded (an in-process buffer insert, no I/O)."""
    record_visit(app, exchange, shop_id)
    return ok_bytes(text)


def send_converge(app: Flask, shop_id: int) -> bool:
    """Ask a worker to finish a shop write's cache steps (cache/shop_sync.py); never raises.

    One publish attempt, bounded by the broker's timeouts: when the broker is the
    Redis that just failed, beat's sweep converges the shop instead.
    """
    try:
        app.extensions["hmdp_celery"].send_task(CONVERGE_TASK, args=[shop_id], retry=False)
        return True
    except Exception as exc:
        log.warning("shop %s: converge task not sent (beat's sweep will do it): %s", shop_id, exc)
        return False
