"""Authentication in one place: a before-request hook and route markers.

Views declare who may call them with ``@login_required`` or ``@admin_required``
(markers only: they set an attribute on the view). The hook below reads the
``authorization`` header, loads the session hash ``login:token:{token}`` from
Redis, refreshes its TTL (sliding session) and enforces the marker, so no view
checks a token itself and a new route cannot forget to.

The user is a fact of the request's :class:`web.exchange.Exchange`, loaded once
(:func:`load_user`) by this hook or by a WSGI fast path (web/order_fastpath.py).

A session says who the user is, never what they may do: an admin route asks
the database (:func:`is_admin`: the user row's role, or a phone of
HMDP_ADMIN_PHONES) on every request, so a role changed in any way (``flask
users role``, SQL, the setting) holds for the user's live sessions at once,
and a session of a deleted user is no login. Only admin routes pay the query.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from flask import Flask, current_app, request
from sqlalchemy import select

from cache.login import TOKEN_KEY, load_session
from models.entities import User
from services import Services

from .envelope import Forbidden, NotLoggedIn
from .exchange import Exchange, current_exchange, usable_token
from .runtime import services

F = TypeVar("F", bound=Callable)
log = logging.getLogger(__name__)

__all__ = [
    "TOKEN_KEY",
    "ADMIN",
    "UserSummary",
    "admin_required",
    "current_token",
    "current_user",
    "is_admin",
    "load_user",
    "login_required",
    "register_auth",
    "require_user",
    "required_access",
    "session_user",
    "usable_token",
]
ACCESS_ATTR = "_hmdp_access"  # "user" or "admin"
ADMIN = "admin"  # tb_user.role of an admin; any other role is an ordinary user


@dataclass(frozen=True)
class UserSummary:
    """What a session holds: hmdp's UserDTO (who, not what they may do: :func:`is_admin`)."""

    id: int
    nick_name: str
    icon: str

    def to_json(self) -> dict:
        return {"id": self.id, "nickName": self.nick_name, "icon": self.icon}

    def to_hash(self) -> dict[str, str]:
        return {
            "id": str(self.id),
            "nickName": self.nick_name,
            "icon": self.icon,
        }

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> UserSummary:
        return cls(
            id=int(data["id"]),
            nick_name=data.get("nickName", ""),
            icon=data.get("icon", ""),
        )


def login_required(view: F) -> F:
    """Mark a view as needing a logged-in user (401 otherwise)."""
    setattr(view, ACCESS_ATTR, "user")
    return view


def admin_required(view: F) -> F:
    """Mark a view as needing an admin (401 without a session, 403 for a user)."""
    setattr(view, ACCESS_ATTR, "admin")
    return view


def required_access(endpoint: str | None) -> str | None:
    """The access a registered endpoint needs: None, 'user' or 'admin'."""
    if endpoint is None:
        return None
    view = current_app.view_functions.get(endpoint)
    return getattr(view, ACCESS_ATTR, None)


def current_user() -> UserSummary | None:
    """The logged-in user of this request, if any."""
    return current_exchange().user


def require_user() -> UserSummary:
    """The logged-in user; views marked login_required can rely on it."""
    user = current_user()
    if user is None:
        raise NotLoggedIn()
    return user


def current_token() -> str:
    """The raw token this request carries ("" if none)."""
    return (request.headers.get("authorization") or "").strip()


def session_user(svc: Services, token: str) -> UserSummary | None:
    """The user of session ``token``, its TTL refreshed; None if absent or bad (no request needed)."""
    data = load_session(svc.redis, token, svc.settings.login_token_ttl)
    if not data or "id" not in data:
        return None
    try:
        return UserSummary.from_hash(data)
    except ValueError:  # a corrupt hash is no session, not a 500
        return None


def is_admin(svc: Services, user_id: int) -> bool | None:
    """Whether the user is an admin now (row role, or a phone of HMDP_ADMIN_PHONES); None: no user."""
    with svc.db.sessions() as session:
        row = session.execute(select(User.role, User.phone).where(User.id == user_id)).first()
    if row is None:
        return None
    return row.role == ADMIN or row.phone in svc.settings.admin_phones


def load_user(exchange: Exchange, svc: Services) -> UserSummary | None:
    """The user of the request's session, loaded once per request (its TTL pushed back)."""
    if not exchange.user_loaded:
        token = exchange.token
        exchange.user = None if token is None else session_user(svc, token)
        exchange.user_loaded = True
    return exchange.user


def register_auth(app: Flask) -> None:
    """Install the hook that loads the session and enforces route markers."""

    @app.before_request
    def _authenticate() -> None:
        rule = request.url_rule
        if request.method == "OPTIONS" and getattr(rule, "provide_automatic_options", False):
            return  # Flask's automatic answer (CORS preflight): runs no view, needs no token
        exchange = current_exchange()
        access = required_access(request.endpoint)
        if access is None:
            # Public routes still see the user (e.g. isLike on a blog), but a
            # public route must not fail because the session store is down.
            if exchange.token is not None:
                try:
                    load_user(exchange, services())
                except redis.RedisError as exc:
                    log.warning("session store unavailable, serving as anonymous: %s", exc)
            return
        user = load_user(exchange, services())
        if user is None:
            raise NotLoggedIn()
        if access == "admin":
            admin = is_admin(services(), user.id)
            if admin is None:
                raise NotLoggedIn("your account no longer exists")
            if not admin:
                raise Forbidden("admin only")
