"""Sessions for tests, made the way the login route makes them (a real hash in Redis).

A session says who the user is; whether they are an admin is the user row's role
(web/auth.is_admin), so an admin session comes with a user row whose role is admin.
"""

from __future__ import annotations

import uuid

from cache.login import create_session
from models.entities import User, UserInfo
from web.auth import ADMIN, UserSummary

ROW_PHONE_BASE = 19_900_000_000  # phones of the rows made here: no demo or test phone


def set_role(services, user_id: int, role: str) -> None:
    """Give user ``user_id`` the role: an admin gets a row if missing, an existing row is changed."""
    with services.db.session() as session:
        user = session.get(User, user_id)
        if user is None and role == ADMIN:
            phone = str(ROW_PHONE_BASE + user_id)
            session.add(User(id=user_id, phone=phone, nick_name=f"user_{user_id}", role=role))
            session.add(UserInfo(user_id=user_id))
        elif user is not None and user.role != role:
            user.role = role


def session_for(
    services, user_id: int, role: str = "user", nick_name: str | None = None
) -> dict[str, str]:
    """The headers of a new session of ``user_id`` with ``role`` (see :func:`set_role`)."""
    set_role(services, user_id, role)
    token = uuid.uuid4().hex
    summary = UserSummary(id=user_id, nick_name=nick_name or f"user_{user_id}", icon="")
    create_session(services.redis, token, summary.to_hash(), services.settings.login_token_ttl)
    return {"authorization": token}
