"""Routes of /follow: follow/unfollow a user, "do I follow?", common follows.

The database (tb_follow, one row per pair) is the truth and is written first;
the Redis set ``follows:{userId}`` mirrors it for the reads (see
:mod:`cache.follows` for the lock and rebuild rules). Following also keeps the
profile counters in step: ``followee`` of the follower and ``fans`` of the
followed user move in the same transaction as the row, and only when the row
really appeared or went (following twice changes nothing).
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, Response
from pydantic import BeforeValidator, Field, WithJsonSchema
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cache import follows as follow_store
from models.demo import BLOGGERS, SOCIAL_USERS
from models.entities import Follow, User, UserInfo
from services import Services

from .auth import login_required, require_user
from .contract import contract
from .envelope import BadRequest, Conflict, NotFound, ok
from .runtime import services
from .schemas import Path, UserSummary, path_id, whole
from .social import followed_ids, user_summaries

bp = Blueprint("follows", __name__)


def _require_user_row(session: Session, user_id: int) -> None:
    if session.get(User, user_id) is None:
        raise NotFound("no such user")


def _bump(session: Session, user_id: int, column: str, delta: int) -> None:
    """Add ``delta`` to a profile counter in SQL (atomic), never below zero."""
    col = getattr(UserInfo, column)
    stmt = update(UserInfo).where(UserInfo.user_id == user_id).values({column: col + delta})
    if delta < 0:
        stmt = stmt.where(col > 0)
    session.execute(stmt)


def _write_follow(me: int, target: int, follow: bool) -> bool:
    """Apply the follow/unfollow to the database; True if a row was added or removed."""
    try:
        with services().db.session() as session:
            _require_user_row(session, target)
            if session.get(User, me) is None:
                raise NotFound("your account no longer exists")
            existing = session.scalar(
                select(Follow.id).where(Follow.user_id == me, Follow.follow_user_id == target)
            )
            if follow == (existing is not None):
                return False  # already in the wanted state: idempotent
            if follow:
                session.add(Follow(user_id=me, follow_user_id=target))
                session.flush()  # a concurrent duplicate fails here, before the counters
            else:
                session.execute(delete(Follow).where(Follow.id == existing))
            delta = 1 if follow else -1
            _bump(session, me, "followee", delta)
            _bump(session, target, "fans", delta)
            return True
    except IntegrityError:
        # The unique pair already exists (a racing request won): nothing changed.
        return False


def _follow_flag(raw: object) -> bool:
    if raw not in ("true", "false"):
        raise whole("isFollow must be 'true' or 'false'")
    return raw == "true"


class UserPath(Path):
    target: path_id("user")


class FollowPath(UserPath):
    is_follow: Annotated[
        bool,
        BeforeValidator(_follow_flag),
        WithJsonSchema({"type": "string", "enum": ["true", "false"]}),
    ]


@bp.put("/follow/<target>/<is_follow>")
@login_required
@contract(
    path=FollowPath,
    data=Annotated[bool, Field(description="whether this call changed anything")],
    errors={404: "no such user", 409: "another follow change of yours is in progress"},
)
def follow(path: FollowPath) -> Response:
    """Follow (``true``) or unfollow (``false``) a user; repeating it changes nothing.

    data = true if this call changed something, false if already in that state.
    """
    flag = path.is_follow
    target_id = path.target
    me = require_user().id
    if target_id == me:
        raise BadRequest("you cannot follow yourself")
    try:
        changed = follow_store.change(
            services().redis,
            me,
            target_id,
            flag,
            lambda: _write_follow(me, target_id, flag),
        )
    except follow_store.FollowBusy:
        raise Conflict("another follow change of yours is in progress; retry") from None
    return ok(changed)


def _existing_user(user_id: int) -> int:
    with services().db.sessions() as session:
        _require_user_row(session, user_id)
    return user_id


@bp.get("/follow/or/not/<target>")
@login_required
@contract(path=UserPath, data=bool, errors={404: "no such user"})
def is_following(path: UserPath) -> Response:
    """Whether the caller follows this user (data = true/false)."""
    target_id = _existing_user(path.target)
    me = require_user().id
    return ok(follow_store.is_following(services().redis, me, target_id, lambda: followed_ids(me)))


@bp.get("/follow/common/<target>")
@login_required
@contract(path=UserPath, data=list[UserSummary], errors={404: "no such user"})
def common_follows(path: UserPath) -> Response:
    """Users that both the caller and this user follow (SINTER), as user summaries."""
    target_id = _existing_user(path.target)
    me = require_user().id
    ids = follow_store.common(services().redis, me, target_id, followed_ids)
    with services().db.sessions() as session:
        return ok(user_summaries(session, ids))


def post_seed(svc: Services) -> None:
    """``flask seed`` wrote follow rows directly: the demo users' sets are rebuilt from them."""
    follow_store.forget(svc.redis, sorted({*SOCIAL_USERS, *BLOGGERS}))
