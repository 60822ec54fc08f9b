"""Reads the social blueprints share: who follows whom, and user summaries.

The database (tb_follow) is the truth of follows; web/follows.py writes it and
mirrors it into Redis, web/blogs.py pushes a blog to the followers' feeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.entities import Follow, User

from .runtime import services


def user_summaries(session: Session, ids: Sequence[int]) -> list[dict]:
    """``{id, nickName, icon}`` of the given users, in the given order (unknown ids skipped)."""
    if not ids:
        return []
    users = {u.id: u for u in session.scalars(select(User).where(User.id.in_(ids)))}
    return [
        {"id": u.id, "nickName": u.nick_name, "icon": u.icon}
        for u in (users.get(i) for i in ids)
        if u is not None
    ]


def followed_ids(user_id: int) -> list[int]:
    """The ids ``user_id`` follows, from the database (rebuilds the Redis set)."""
    with services().db.sessions() as session:
        return list(session.scalars(select(Follow.follow_user_id).where(Follow.user_id == user_id)))


def follower_ids(user_id: int) -> Iterable[int]:
    """The ids that follow ``user_id`` (a blog's feed goes to them)."""
    with services().db.sessions() as session:
        return list(session.scalars(select(Follow.user_id).where(Follow.follow_user_id == user_id)))
