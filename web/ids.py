"""Ids in paths: the one URL converter and the one helper for ids the view judges itself.

Every id of ours is a BIGINT (:data:`models.entities.MAX_ID` bounds them); an id
outside 1..MAX_ID cannot exist and must not reach the database driver.
"""

from __future__ import annotations

from werkzeug.routing import IntegerConverter, Map

from models.entities import MAX_ID

from .envelope import BadRequest, NotFound


class IdConverter(IntegerConverter):
    """``<id:name>``: a decimal id in 1..MAX_ID; anything else matches no route (404)."""

    def __init__(self, map: Map) -> None:
        super().__init__(map, min=1, max=MAX_ID)


def path_id(raw: str, what: str = "user") -> int:
    """An id from a path segment: not digits -> 400, out of range -> 404 (cannot exist)."""
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{what} id must be a positive integer")
    value = int(raw)
    if not 1 <= value <= MAX_ID:
        raise NotFound(f"no such {what}")
    return value
