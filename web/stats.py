"""Unique visitors of shops: fed by shop reads, read by ``GET /shop/{id}/uv?date=``.

``record_shop_visit(shop_id)`` is what GET /shop/{id} calls after a successful
read: it costs an in-process buffer insert (no I/O); the app's
:class:`cache.uv.UvBuffer` flushes pipelined PFADDs every
settings.uv_flush_interval seconds. A visitor is the logged-in user's id, else
the client's IP address. A crash loses at most the last interval of visits.
"""

from __future__ import annotations

import logging
import re
from datetime import date
from typing import Any

from flask import Blueprint, Response, current_app, request

from cache import uv as uv_store
from models.entities import Shop

from .auth import current_user
from .envelope import BadRequest, NotFound, ok
from .ids import path_id
from .ratelimit import client_ip
from .runtime import services, settings, today

log = logging.getLogger(__name__)

bp = Blueprint("stats", __name__)

UV_EXTENSION = "hmdp_uv"
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


@bp.record_once
def _install(state: Any) -> None:
    svc = state.app.extensions["hmdp"]
    cfg = svc.settings
    state.app.extensions[UV_EXTENSION] = uv_store.UvBuffer(
        lambda: svc.redis,
        interval=cfg.uv_flush_interval,
        max_pending=cfg.uv_buffer_max,
        retention_days=cfg.uv_retention_days,
    )


def uv_buffer() -> uv_store.UvBuffer:
    """This app's UV buffer."""
    return current_app.extensions[UV_EXTENSION]


def visitor() -> str:
    """Who is visiting: ``u:{id}`` when logged in, else ``ip:{address}``."""
    user = current_user()
    if user is not None:
        return f"u:{user.id}"
    return f"ip:{client_ip(settings().trusted_proxies)}"


def record_shop_visit(shop_id: int) -> None:
    """Count this request's visitor for the shop today; never fails the request."""
    try:
        uv_buffer().record(shop_id, today(), visitor())
    except Exception:  # UV is an estimate: a bug here must not break shop reads
        log.exception("UV not recorded for shop %s", shop_id)


def _date_arg() -> date:
    raw = request.args.get("date")
    if raw is None or raw == "":
        return today()
    if DATE_RE.fullmatch(raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise BadRequest(f"query parameter 'date' must be YYYY-MM-DD, got {raw[:20]!r}")


@bp.get("/shop/<shop_id>/uv")
def shop_uv(shop_id: str) -> Response:
    """Estimated distinct visitors of a shop on ``date`` (YYYY-MM-DD, default today).

    This process's buffered visits are flushed first, so a read right after
    visits through the same process sees them.
    """
    ident = path_id(shop_id, "shop")
    day = _date_arg()
    with services().db.sessions() as session:
        if session.get(Shop, ident) is None:
            raise NotFound("shop not found")
    buffer = uv_buffer()
    if buffer.pending():
        buffer.flush()
    return ok(
        {
            "shopId": ident,
            "date": day.isoformat(),
            "uv": uv_store.count(services().redis, ident, day),
        }
    )
