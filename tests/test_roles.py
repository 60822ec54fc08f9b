"""Roles reach live sessions: an admin route asks the database on every request.

Sessions are made by the real login route (a code through the test sender); a role
is changed by ``flask users role``, by SQL, and by HMDP_ADMIN_PHONES, and the same
token is judged by the new role on its next request, while the session itself lives on.
"""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select, update
from support.senders import MemoryCodeSender

from models.entities import User
from web.sms import EXTENSION

PHONE = "13712345678"
ADMIN_PHONE = "13900000000"  # the test settings' HMDP_ADMIN_PHONES


@pytest.fixture
def sender(app) -> MemoryCodeSender:
    sender = MemoryCodeSender()
    app.extensions[EXTENSION] = sender
    return sender


def log_in(client, sender: MemoryCodeSender, phone: str = PHONE) -> dict[str, str]:
    assert client.post(f"/user/code?phone={phone}").status_code == 200
    answer = client.post("/user/login", json={"phone": phone, "code": sender.last_code(phone)})
    assert answer.status_code == 200, answer.get_json()
    return {"authorization": answer.get_json()["data"]}


def admin_access(client, headers: dict[str, str]) -> int:
    """The status of an admin route for this session: 400 (let in: the body is empty), 403, 401."""
    response = client.post("/shop", json={}, headers=headers)
    assert response.get_json()["success"] is False
    return response.status_code


def role_of(services, phone: str) -> str:
    with services.db.sessions() as session:
        return session.scalar(select(User.role).where(User.phone == phone))


def set_role(app, phone: str, role: str):
    result = app.test_cli_runner().invoke(args=["users", "role", phone, role])
    assert result.exit_code == 0, result.output
    return result


def test_a_new_user_is_no_admin(client, sender):
    me = log_in(client, sender)
    assert admin_access(client, me) == 403
    assert admin_access(client, {}) == 401


def test_the_admin_phones_setting_makes_an_admin(client, sender, services):
    admin = log_in(client, sender, ADMIN_PHONE)
    assert admin_access(client, admin) == 400
    assert role_of(services, ADMIN_PHONE) == "user"  # the setting, not the row


def test_demotion_reaches_a_live_session(app, client, sender, services):
    set_role(app, PHONE, "admin")
    me = log_in(client, sender)
    assert admin_access(client, me) == 400
    set_role(app, PHONE, "user")
    assert admin_access(client, me) == 403  # the same token, at once
    assert client.get("/user/me", headers=me).status_code == 200  # still logged in
    set_role(app, PHONE, "admin")
    assert admin_access(client, me) == 400  # and a promotion too


def test_a_role_changed_in_sql_holds_at_once(client, sender, services):
    me = log_in(client, sender)
    with services.db.session() as session:
        session.execute(update(User).where(User.phone == PHONE).values(role="admin"))
    assert admin_access(client, me) == 400
    with services.db.session() as session:
        session.execute(update(User).where(User.phone == PHONE).values(role="user"))
    assert admin_access(client, me) == 403


def test_a_phone_taken_out_of_the_setting_is_no_admin_any_more(app, app_with, sender):
    admin = log_in(app.test_client(), sender, ADMIN_PHONE)
    assert admin_access(app.test_client(), admin) == 400
    restarted = app_with(admin_phones=())  # the same Redis and database, the phone gone
    assert admin_access(restarted.test_client(), admin) == 403


def test_a_deleted_user_is_not_logged_in_on_admin_routes(app, client, sender, services):
    set_role(app, PHONE, "admin")
    me = log_in(client, sender)
    with services.db.session() as session:
        session.execute(delete(User).where(User.phone == PHONE))
    assert admin_access(client, me) == 401


def test_the_role_command(app, services):
    runner = app.test_cli_runner()
    result = set_role(app, PHONE, "admin")  # no such user yet: created, as a first login would
    assert f"({PHONE}) is now admin" in result.output and role_of(services, PHONE) == "admin"
    result = runner.invoke(args=["users", "role", ADMIN_PHONE, "user"])
    assert result.exit_code == 0 and "HMDP_ADMIN_PHONES" in result.output
    for bad in (["12345", "admin"], [PHONE, "root"]):
        result = runner.invoke(args=["users", "role", *bad])
        assert result.exit_code == 2, result.output
    assert role_of(services, PHONE) == "admin"
