"""Login by code, sessions, the brute-force lock and the /user routes (real Redis and DB)."""

from __future__ import annotations

import threading
from datetime import date

import pytest
from sqlalchemy import func, select
from support.redis_faults import all_keys
from support.senders import MemoryCodeSender
from werkzeug.security import generate_password_hash

from cache.login import (
    CODE_KEY,
    PASSWORD_FAIL_KEY,
    PASSWORD_LOCK_KEY,
    TOKEN_KEY,
    WRONG_KEY,
)
from models.entities import User, UserInfo
from web.sms import EXTENSION

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

PHONE = "13712345678"


def envelope(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.is_json, response.data[:300]
    body = response.get_json()
    assert set(body) == {"success", "errorMsg", "data", "total"}
    assert body["success"] is (status < 400)
    if status >= 400:
        assert body["errorMsg"]
    return body


@pytest.fixture
def sender(app) -> MemoryCodeSender:
    sender = MemoryCodeSender()
    app.extensions[EXTENSION] = sender
    return sender


def send_code(client, sender: MemoryCodeSender, phone: str = PHONE) -> str:
    envelope(client.post(f"/user/code?phone={phone}"), 200)
    code = sender.last_code(phone)
    assert code is not None
    return code


def log_in(client, sender: MemoryCodeSender, phone: str = PHONE) -> str:
    code = send_code(client, sender, phone)
    token = envelope(client.post("/user/login", json={"phone": phone, "code": code}), 200)["data"]
    assert isinstance(token, str) and token
    return token


def count_users(services, phone: str) -> tuple[int, int]:
    with services.db.session() as s:
        users = s.scalar(select(func.count()).select_from(User).where(User.phone == phone))
        infos = s.scalar(
            select(func.count())
            .select_from(UserInfo)
            .join(User, User.id == UserInfo.user_id)
            .where(User.phone == phone)
        )
    return users, infos


def test_full_login_flow(client, sender, services, redis_client):
    code = send_code(client, sender)
    assert len(code) == 6 and code.isdigit()
    key = CODE_KEY.format(phone=PHONE)
    assert redis_client.get(key) == code
    assert 0 < redis_client.ttl(key) <= services.settings.login_code_ttl

    token = envelope(client.post("/user/login", json={"phone": PHONE, "code": code}), 200)["data"]
    assert redis_client.exists(key) == 0  # consumed
    session_key = TOKEN_KEY.format(token=token)
    session = redis_client.hgetall(session_key)
    assert "role" not in session  # who, not what they may do (web/auth.is_admin)
    assert session["nickName"].startswith("user_")
    assert len(session["nickName"]) == len("user_") + 10
    assert 0 < redis_client.ttl(session_key) <= services.settings.login_token_ttl

    me = envelope(client.get("/user/me", headers={"authorization": token}), 200)["data"]
    assert me == {"id": int(session["id"]), "nickName": session["nickName"], "icon": ""}
    assert count_users(services, PHONE) == (1, 1)

    envelope(client.post("/user/logout", headers={"authorization": token}), 200)
    assert redis_client.exists(session_key) == 0
    envelope(client.get("/user/me", headers={"authorization": token}), 401)
    envelope(client.post("/user/logout", headers={"authorization": token}), 401)


def test_logout_ends_only_that_session(client, sender):
    first, second = log_in(client, sender), log_in(client, sender)
    envelope(client.post("/user/logout", headers={"authorization": first}), 200)
    envelope(client.get("/user/me", headers={"authorization": first}), 401)
    envelope(client.get("/user/me", headers={"authorization": second}), 200)


def test_first_login_creates_the_user_once(client, sender, services):
    log_in(client, sender)
    ids = set()
    for _ in range(3):
        token = log_in(client, sender)
        ids.add(
            envelope(client.get("/user/me", headers={"authorization": token}), 200)["data"]["id"]
        )
    assert len(ids) == 1
    assert count_users(services, PHONE) == (1, 1)


def test_existing_user_logs_in_as_itself(client, sender, seeded):
    token = log_in(client, sender, "13800000001")  # demo user id 2
    me = envelope(client.get("/user/me", headers={"authorization": token}), 200)["data"]
    assert me["id"] == 2 and me["nickName"] == "user_000002"


def test_a_code_works_once(client, sender, redis_client):
    code = send_code(client, sender)
    envelope(client.post("/user/login", json={"phone": PHONE, "code": code}), 200)
    body = envelope(client.post("/user/login", json={"phone": PHONE, "code": code}), 401)
    assert "code" in body["errorMsg"]
    assert redis_client.exists(WRONG_KEY.format(phone=PHONE)) == 0  # no live code: not counted


def test_a_code_works_once_under_concurrency(app, sender, services):
    code = send_code(app.test_client(), sender)
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/user/login", json={"phone": PHONE, "code": code})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [401] * 7
    assert count_users(services, PHONE) == (1, 1)


def test_a_new_code_replaces_the_old_one(client, sender):
    old = send_code(client, sender)
    new = send_code(client, sender)
    if old != new:
        envelope(client.post("/user/login", json={"phone": PHONE, "code": old}), 401)
    envelope(client.post("/user/login", json={"phone": PHONE, "code": new}), 200)


def wrong_for(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_wrong_code_is_401_and_the_right_one_still_works(client, sender, redis_client):
    code = send_code(client, sender)
    body = envelope(client.post("/user/login", json={"phone": PHONE, "code": wrong_for(code)}), 401)
    assert "wrong code" in body["errorMsg"]
    wrong_key = WRONG_KEY.format(phone=PHONE)
    assert redis_client.get(wrong_key) == "1"
    # The count dies with its code (the same moment, to the millisecond or so).
    wrong_ttl, code_ttl = (
        redis_client.pttl(wrong_key),
        redis_client.pttl(CODE_KEY.format(phone=PHONE)),
    )
    assert wrong_ttl > 0 and abs(wrong_ttl - code_ttl) <= 50
    envelope(client.post("/user/login", json={"phone": PHONE, "code": code}), 200)
    assert redis_client.exists(wrong_key) == 0  # gone with the consumed code


def test_unknown_and_expired_tokens_are_401(client, sender, redis_client):
    envelope(client.get("/user/me", headers={"authorization": "no-such-token"}), 401)
    envelope(client.get("/user/me", headers={"authorization": "x" * 500}), 401)
    envelope(client.get("/user/me"), 401)
    token = log_in(client, sender)
    # Real expiry: an expiry time in the past makes Redis drop the key.
    redis_client.pexpireat(TOKEN_KEY.format(token=token), 1)
    envelope(client.get("/user/me", headers={"authorization": token}), 401)
    assert redis_client.exists(TOKEN_KEY.format(token=token)) == 0  # not recreated


def test_every_authenticated_request_refreshes_the_session_ttl(
    client, sender, redis_client, settings
):
    token = log_in(client, sender)
    key = TOKEN_KEY.format(token=token)
    redis_client.expire(key, 5)
    envelope(client.get("/user/me", headers={"authorization": token}), 200)
    assert redis_client.ttl(key) > settings.login_token_ttl - 60
    redis_client.expire(key, 5)
    envelope(client.get("/user/1", headers={"authorization": token}), 200)  # public route too
    assert redis_client.ttl(key) > settings.login_token_ttl - 60


@pytest.fixture
def strict_app(settings):
    from web import create_app

    app = create_app(
        settings.with_(login_max_wrong_codes=3, login_max_wrong_passwords=3, login_lock_seconds=600)
    )
    sender = MemoryCodeSender()
    app.extensions[EXTENSION] = sender
    yield app, sender
    app.extensions["hmdp"].close()


def test_wrong_guesses_void_the_code_and_never_lock_the_phone(strict_app):
    app, sender = strict_app
    client = app.test_client()
    redis_client = app.extensions["hmdp"].redis
    code = send_code(client, sender)
    wrong = {"phone": PHONE, "code": wrong_for(code)}
    messages = [envelope(client.post("/user/login", json=wrong), 401)["errorMsg"] for _ in range(3)]
    assert "2 guesses left" in messages[0] and "1 guesses left" in messages[1]
    assert "void" in messages[2]
    # Voided: even the right code is refused now, and nothing is left in Redis of it.
    assert (
        "no valid code"
        in envelope(client.post("/user/login", json={"phone": PHONE, "code": code}), 401)[
            "errorMsg"
        ]
    )
    assert redis_client.exists(CODE_KEY.format(phone=PHONE), WRONG_KEY.format(phone=PHONE)) == 0
    # No lock: the owner asks for a new code at once and logs in with it, first try.
    log_in(client, sender)
    # A new code starts with all its guesses, and a new code after wrong guesses too.
    code = send_code(client, sender)
    envelope(client.post("/user/login", json={"phone": PHONE, "code": wrong_for(code)}), 401)
    code = send_code(client, sender)
    assert redis_client.exists(WRONG_KEY.format(phone=PHONE)) == 0
    for _ in range(2):
        envelope(client.post("/user/login", json={"phone": PHONE, "code": wrong_for(code)}), 401)
    envelope(client.post("/user/login", json={"phone": PHONE, "code": code}), 200)
    assert not all_keys(redis_client, "login:*lock*")


def test_concurrent_guesses_get_exactly_the_allowed_number(strict_app):
    app, sender = strict_app
    code = send_code(app.test_client(), sender)
    guesses = [f"{(int(code) + k) % 1_000_000:06d}" for k in range(1, 21)]
    answers: list[str] = []
    barrier = threading.Barrier(len(guesses))

    def guess(value: str) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/user/login", json={"phone": PHONE, "code": value})
        answers.append(envelope(response, 401)["errorMsg"])

    threads = [threading.Thread(target=guess, args=(g,)) for g in guesses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Three guesses were judged (two with guesses left, one voiding); the rest found no code.
    judged = [a for a in answers if a.startswith("wrong code")]
    assert len(judged) == 3 and sum("void" in a for a in judged) == 1
    assert all(a.startswith("no valid code") for a in answers if a not in judged)
    assert len(answers) == len(guesses)


def _set_password(services, phone: str, password: str) -> None:
    with services.db.session() as s:
        user = s.scalar(select(User).where(User.phone == phone))
        user.password = generate_password_hash(password, method="pbkdf2:sha256:1000")


def test_password_login(client, sender, services, redis_client):
    log_in(client, sender)
    envelope(client.post("/user/login", json={"phone": PHONE, "password": "secret1"}), 401)
    assert (
        redis_client.exists(PASSWORD_FAIL_KEY.format(phone=PHONE)) == 0
    )  # no password: not counted
    _set_password(services, PHONE, "secret1")
    envelope(client.post("/user/login", json={"phone": PHONE, "password": "wrong"}), 401)
    assert redis_client.get(PASSWORD_FAIL_KEY.format(phone=PHONE)) == "1"
    token = envelope(client.post("/user/login", json={"phone": PHONE, "password": "secret1"}), 200)[
        "data"
    ]
    envelope(client.get("/user/me", headers={"authorization": token}), 200)
    assert redis_client.exists(PASSWORD_FAIL_KEY.format(phone=PHONE)) == 0


def test_password_login_for_unknown_phone_creates_nobody(client, services, redis_client):
    envelope(client.post("/user/login", json={"phone": PHONE, "password": "x"}), 401)
    assert count_users(services, PHONE) == (0, 0)
    assert redis_client.dbsize() == 0


def test_wrong_passwords_lock_password_login_only(strict_app):
    app, sender = strict_app
    client = app.test_client()
    redis_client = app.extensions["hmdp"].redis
    log_in(client, sender)
    _set_password(app.extensions["hmdp"], PHONE, "secret1")
    for _ in range(2):
        envelope(client.post("/user/login", json={"phone": PHONE, "password": "nope"}), 401)
    locked = client.post("/user/login", json={"phone": PHONE, "password": "nope"})
    envelope(locked, 429)
    assert int(locked.headers["Retry-After"]) == 600
    refused = client.post("/user/login", json={"phone": PHONE, "password": "secret1"})
    assert "log in with a code" in envelope(refused, 429)["errorMsg"]
    assert 0 < int(refused.headers["Retry-After"]) <= 600
    assert 0 < redis_client.ttl(PASSWORD_LOCK_KEY.format(phone=PHONE)) <= 600
    # The owner is not locked out: codes are still sent and log in.
    log_in(client, sender)
    # The lock ends (a past expiry time makes Redis drop it).
    redis_client.pexpireat(PASSWORD_LOCK_KEY.format(phone=PHONE), 1)
    envelope(client.post("/user/login", json={"phone": PHONE, "password": "secret1"}), 200)


class FailingSender:
    """A gateway that is down: every send raises."""

    def send(self, phone: str, code: str) -> None:
        raise ConnectionError("SMS gateway unreachable")


def test_undeliverable_code_is_503_and_not_kept(app, client, redis_client):
    app.extensions[EXTENSION] = FailingSender()
    envelope(client.post(f"/user/code?phone={PHONE}"), 503)
    assert redis_client.dbsize() == 0


BAD_PHONE_QUERIES = [
    "",
    "?phone=",
    "?phone=123",
    "?phone=12345678901",  # 2nd digit must be 3-9
    "?phone=1380000000",  # 10 digits
    "?phone=138000000011",  # 12 digits
    "?phone=1380000000a",
    "?phone=%EF%BC%91%EF%BC%93800000001",  # full-width digits
    "?phone=13800000001%0A",  # trailing newline
    "?phone=+8613800000001",
    "?phone=%2013800000001",
]


def test_send_code_rejects_bad_phones(client, sender, redis_client):
    # One test, many inputs: each must be refused and leave Redis empty.
    for query in BAD_PHONE_QUERIES:
        body = envelope(client.post(f"/user/code{query}"), 400)
        assert "phone" in body["errorMsg"], query
        assert redis_client.dbsize() == 0, query
    assert sender.sent == []


def test_the_phone_may_come_from_the_query_or_the_body_but_only_one(client, sender, redis_client):
    envelope(client.post("/user/code", json={"phone": PHONE}), 200)
    code = sender.last_code(PHONE)
    assert redis_client.get(CODE_KEY.format(phone=PHONE)) == code
    other = "13712345679"
    for path, body in [
        (f"/user/code?phone={other}", {"phone": PHONE}),
        (f"/user/login?phone={other}", {"phone": PHONE, "code": code}),
        (f"/user/login?phone={PHONE}", {"phone": "123", "code": code}),
    ]:
        response = client.post(path, json=body)
        assert "phone" in envelope(response, 400)["errorMsg"], path
    assert [phone for phone, _ in sender.sent] == [PHONE]  # nothing sent to the other
    assert redis_client.get(CODE_KEY.format(phone=PHONE)) == code  # nor the code used
    assert redis_client.exists(CODE_KEY.format(phone=other)) == 0
    # The same phone in both places, or only in the query, is that phone.
    token = envelope(
        client.post(f"/user/login?phone={PHONE}", json={"phone": PHONE, "code": code}), 200
    )["data"]
    envelope(client.get("/user/me", headers={"authorization": token}), 200)
    code = send_code(client, sender)
    envelope(client.post(f"/user/login?phone={PHONE}", json={"code": code}), 200)


BAD_LOGIN_BODIES = [
    {"data": "phone=13712345678&code=123456", "status": 415},  # form, not JSON
    {"data": "phone=13712345678&code=123456", "content_type": "text/plain", "status": 415},
    {"data": "{not json", "content_type": "application/json"},
    {"data": ""},
    {"json": ["13712345678", "123456"]},
    {"json": "13712345678"},
    {"json": {}},
    {"json": {"code": "123456"}},
    {"json": {"phone": "123", "code": "123456"}},
    {"json": {"phone": 13712345678, "code": "123456"}},
    {"json": {"phone": PHONE}},
    {"json": {"phone": PHONE, "code": ""}},
    {"json": {"phone": PHONE, "code": "12345"}},
    {"json": {"phone": PHONE, "code": "1234567"}},
    {"json": {"phone": PHONE, "code": "abcdef"}},
    {"json": {"phone": PHONE, "code": "１２３４５６"}},
    {"json": {"phone": PHONE, "code": 123456}},
    {"json": {"phone": PHONE, "code": None, "password": ""}},
    {"json": {"phone": PHONE, "password": 12345}},
    {"json": {"phone": PHONE, "password": "x" * 129}},
]


def test_login_rejects_bad_input_without_writing(client, sender, redis_client, services):
    code = send_code(client, sender)
    for bad in BAD_LOGIN_BODIES:
        kwargs = {k: v for k, v in bad.items() if k != "status"}
        envelope(client.post("/user/login", **kwargs), bad.get("status", 400))
        # The code is untouched, nothing counted, no session.
        assert all_keys(redis_client) == [CODE_KEY.format(phone=PHONE)], kwargs
        assert redis_client.get(CODE_KEY.format(phone=PHONE)) == code, kwargs
    assert count_users(services, PHONE) == (0, 0)
    envelope(client.post("/user/login", json={"phone": PHONE, "code": code}), 200)


def test_user_summary(client, seeded):
    assert envelope(client.get("/user/2"), 200)["data"] == {
        "id": 2,
        "nickName": "user_000002",
        "icon": "/imgs/icons/kkjtbcr.jpg",  # a demo blogger: one of the front end's avatars
    }
    assert envelope(client.get("/user/12"), 200)["data"]["icon"] == ""  # the default avatar


def test_unknown_users_are_404(client, seeded):
    for path in [
        "/user/0",
        "/user/999999",
        "/user/-1",
        "/user/abc",
        "/user/99999999999999999999999",
        "/user/info/0",
        "/user/info/424242",
        "/user/info/99999999999999999999",
    ]:
        assert envelope(client.get(path), 404)["data"] is None, path


def test_user_profile(client, seeded, services):
    with services.db.session() as s:
        s.get(UserInfo, 3).birthday = date(1990, 5, 17)
    data = envelope(client.get("/user/info/3"), 200)["data"]
    assert data["userId"] == 3 and data["city"] == "杭州" and data["level"] == 3
    assert data["birthday"] == "1990-05-17"
    for field in ("introduce", "fans", "followee", "gender", "credits"):
        assert field in data


def test_new_users_have_an_empty_profile(client, sender):
    token = log_in(client, sender)
    user_id = envelope(client.get("/user/me", headers={"authorization": token}), 200)["data"]["id"]
    data = envelope(client.get(f"/user/info/{user_id}"), 200)["data"]
    assert data["fans"] == 0 and data["birthday"] is None and data["city"] == ""
