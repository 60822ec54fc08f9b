"""Unique visitors of shops: ``GET /shop/{id}/uv?date=``.

Shop reads feed them (web/visits.py: the app's buffer, the visitor); this
route reads the HyperLogLog of a day.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from flask import Blueprint, Response, current_app
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from cache import uv as uv_store
from models.entities import Shop

from .contract import contract
from .envelope import NotFound, ok
from .runtime import services, today
from .schemas import Path, Query, path_id, whole
from .visits import uv_buffer

bp = Blueprint("stats", __name__)

DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def _day(raw: object) -> date:
    if isinstance(raw, str) and DATE_RE.fullmatch(raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    shown = raw[:20] if isinstance(raw, str) else raw
    raise whole(f"query parameter 'date' must be YYYY-MM-DD, got {shown!r}")


class ShopPath(Path):
    shop_id: path_id("shop")


Day = Annotated[
    date | None,
    BeforeValidator(_day),
    WithJsonSchema({"type": "string", "format": "date", "description": "default: today"}),
]


class DayQuery(Query):
    date: Day = None


class UvData(BaseModel):
    shopId: int
    date: str
    uv: int = Field(description="estimated distinct visitors (HyperLogLog)")


@bp.get("/shop/<shop_id>/uv")
@contract(path=ShopPath, query=DayQuery, data=UvData, errors={404: "shop not found"})
def shop_uv(path: ShopPath, query: DayQuery) -> Response:
    """Estimated distinct visitors of a shop on ``date`` (YYYY-MM-DD, default today).

    This process's buffered visits are flushed first, so a read right after
    visits through the same process sees them.
    """
    ident = path.shop_id
    day = query.date or today()
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
