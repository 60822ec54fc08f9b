"""Shop visits for UV: the app's buffer, and the one way a visit is recorded.

``GET /shop/{id}`` records its visitor after a successful read, whether Flask
or the fast path answers it: the logged-in user (``u:{id}``), else the client
address (``ip:{address}``). A visit costs an in-process buffer insert (no I/O);
the app's :class:`cache.uv.UvBuffer` flushes pipelined PFADDs every
``settings.uv_flush_interval`` seconds, so a crash loses at most that much of
an estimate.
"""

from __future__ import annotations

import logging

from flask import Flask

from cache.uv import UvBuffer
from services import Services

from .exchange import Exchange

log = logging.getLogger(__name__)

EXTENSION = "hmdp_uv"


def install(app: Flask, svc: Services) -> UvBuffer:
    """Give the app its UV buffer (it connects on its first flush)."""
    cfg = svc.settings
    buffer = app.extensions[EXTENSION] = UvBuffer(
        lambda: svc.redis,
        interval=cfg.uv_flush_interval,
        max_pending=cfg.uv_buffer_max,
        retention_days=cfg.uv_retention_days,
    )
    return buffer


def uv_buffer(app: Flask) -> UvBuffer:
    """The app's UV buffer."""
    return app.extensions[EXTENSION]


def record_visit(app: Flask, exchange: Exchange, shop_id: int) -> None:
    """Count the request's visitor for the shop today; never fails the request.

    The visitor is ``u:{id}`` when logged in, else ``ip:{address}``.
    """
    svc: Services = app.extensions["hmdp"]
    try:
        user = exchange.user
        if user is not None:
            visitor = f"u:{user.id}"
        else:
            visitor = f"ip:{exchange.client_ip(svc.settings.trusted_proxies)}"
        app.extensions[EXTENSION].record(shop_id, svc.clock().date(), visitor)
    except Exception:  # UV is an estimate: a bug here must not break shop reads
        log.exception("UV not recorded for shop %s", shop_id)
