"""Ids in paths: the one URL converter (path ids a route judges itself: web/schemas.path_id).

Every id of ours is a BIGINT (:data:`models.entities.MAX_ID` bounds them); an id
outside 1..MAX_ID cannot exist and must not reach the database driver.
"""

from __future__ import annotations

from werkzeug.routing import IntegerConverter, Map

from models.entities import MAX_ID


class IdConverter(IntegerConverter):
    """``<id:name>``: a decimal id in 1..MAX_ID; anything else matches no route (404)."""

    def __init__(self, map: Map) -> None:
        super().__init__(map, min=1, max=MAX_ID)
