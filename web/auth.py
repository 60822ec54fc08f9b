"""Authentication in one place: a before-request hook and route markers.

Views declare who may call them with ``@login_required`` or ``@admin_required``
(markers only: they set an attribute on the view). The hook below reads the
``authorization`` header, loads the session hash ``login:token:{token}`` from
Redis, refreshes its TTL (sliding session) and enforces the marker, so no view
checks a token itself and a new route cannot forget to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import Flask, current_app, g, request

from .envelope import Forbidden, Unauthorized
from .runtime import services

F = TypeVar("F", bound=Callable)

TOKEN_KEY = "login:token:{token}"
ACCESS_ATTR = "_hmdp_access"  # "user" or "admin"


@dataclass(frozen=True)
class UserSummary:
    """What a session holds: hmdp's UserDTO plus the role."""

    id: int
    nick_name: str
    icon: str
    role: str = "user"

    def to_json(self) -> dict:
        return {"id": self.id, "nickName": self.nick_name, "icon": self.icon}

    def to_hash(self) -> dict[str, str]:
        return {
            "id": str(self.id),
            "nickName": self.nick_name,
            "icon": self.icon,
            "role": self.role,
        }

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> UserSummary:
        return cls(
            id=int(data["id"]),
            nick_name=data.get("nickName", ""),
            icon=data.get("icon", ""),
            role=data.get("role", "user"),
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
    return g.get("user")


def require_user() -> UserSummary:
    """The logged-in user; views marked login_required can rely on it."""
    user = current_user()
    if user is None:
        raise Unauthorized("not logged in")
    return user


def _load_session() -> UserSummary | None:
    token = (request.headers.get("authorization") or "").strip()
    if not token or len(token) > 128:
        return None
    key = TOKEN_KEY.format(token=token)
    client = services().redis
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(key)
    pipe.expire(key, services().settings.login_token_ttl)
    data, _ = pipe.execute()
    if not data or "id" not in data:
        return None
    return UserSummary.from_hash(data)


def register_auth(app: Flask) -> None:
    """Install the hook that loads the session and enforces route markers."""

    @app.before_request
    def _authenticate() -> None:
        access = required_access(request.endpoint)
        # Public routes still see the user (e.g. isLike on a blog), but a
        # public route must not fail because the session store is slow.
        g.user = _load_session() if (access or request.headers.get("authorization")) else None
        if access is None:
            return
        if g.user is None:
            raise Unauthorized("not logged in")
        if access == "admin" and g.user.role != "admin":
            raise Forbidden("admin only")
