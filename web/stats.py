"""Unique visitors of shops: ``GET /shop/{id}/uv?date=``.

Shop reads feed them (web/visits.py: the app's buffer, the visitor); this
route reads the HyperLogLog of a day.
"""

from __future__ import annotations

import re
from datetime import date

from flask import Blueprint, Response, current_app, request

from cache import uv as uv_store
from models.entities import Shop

from .envelope import BadRequest, NotFound, ok
from .ids import path_id
from .runtime import services, today
from .visits import uv_buffer

bp = Blueprint("stats", __name__)

DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


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
    buffer = uv_buffer(current_app)
    if buffer.pending():
        buffer.flush()
    return ok(
        {
            "shopId": ident,
            "date": day.isoformat(),
            "uv": uv_store.count(services().redis, ident, day),
        }
    )
