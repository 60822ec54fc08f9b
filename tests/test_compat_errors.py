"""The hmdp compatibility mode for errors (web/exchange.py, Finish.shown).

The hmdp front end shows ``errorMsg`` only of a 2xx answer: in compat mode an
error but 401 is HTTP 200 with the same envelope and its real status in
``X-Hmdp-Status``, while the HTTP metrics and the access line keep the real
status. A missing or expired login stays 401 (the front end's login page); a
refused login attempt, also 401, is shown with its reason. Each error class is played through Flask with the mode asked for by the
request header, and again (some) with the deployment setting; the fast paths'
compat answers are compared with Flask's in tests/test_fast_paths.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from support.images import PNG
from support.seckill import add_shop, create_seckill
from support.social import make_users

from cache import login as login_store
from web.exchange import COMPAT_HEADER, REAL_STATUS_HEADER

COMPAT = {COMPAT_HEADER: "1"}


def _status_count(app, status: int) -> float:  # type: ignore[no-untyped-def]
    """flask_http_request_total of this status label, all methods."""
    return sum(
        s.value
        for family in app.extensions["hmdp_metrics"].registry.collect()
        for s in family.samples
        if s.name == "flask_http_request_total" and s.labels["status"] == str(status)
    )


def _upload(client, headers, data: bytes):  # type: ignore[no-untyped-def]
    return client.post(
        "/upload/blog",
        data={"file": (io.BytesIO(data), "photo.png")},
        headers=headers,
        content_type="multipart/form-data",
    )


def _assert_shown_as_200(response, real: int, message: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.get_data()
    assert response.headers[REAL_STATUS_HEADER] == str(real)
    assert COMPAT_HEADER in response.headers.get_all("Vary")
    body = response.json
    assert body["success"] is False and message in body["errorMsg"], body


# (name, real status, what errorMsg says, how to make it: (client, user, headers))
def _bad_request(client, user, headers):  # type: ignore[no-untyped-def]
    return client.get("/shop/0", headers=headers)


def _forbidden(client, user, headers):  # type: ignore[no-untyped-def]
    return client.put("/shop", json={"id": 1, "name": "x"}, headers={**headers, **user()})


def _not_found(client, user, headers):  # type: ignore[no-untyped-def]
    return client.get("/shop/99999999", headers=headers)


def _no_route(client, user, headers):  # type: ignore[no-untyped-def]
    return client.get("/no/such/route", headers=headers)


def _wrong_method(client, user, headers):  # type: ignore[no-untyped-def]
    return client.delete("/shop/1", headers=headers)


def _body_too_large(client, user, headers):  # type: ignore[no-untyped-def]
    body = b'{"phone":"' + b"1" * (1024 * 1024) + b'"}'  # above the app's 1 MiB
    return client.post("/user/login", data=body, content_type="application/json", headers=headers)


def _too_large(client, user, headers):  # type: ignore[no-untyped-def]
    return _upload(client, {**headers, **user()}, PNG + b"\0" * 4096)


def _not_an_image(client, user, headers):  # type: ignore[no-untyped-def]
    return _upload(client, {**headers, **user()}, b"plain text, not an image")


def _too_many(client, user, headers):  # type: ignore[no-untyped-def]
    user = {**headers, **user()}
    assert _upload(client, user, PNG).status_code == 200
    return _upload(client, user, PNG)


def _unavailable(client, user, headers):  # type: ignore[no-untyped-def]
    # the default code sender (an SMS gateway over HTTP) without a gateway URL
    return client.post("/user/code", query_string={"phone": "13812345678"}, headers=headers)


def _login_refused(client, user, headers):  # type: ignore[no-untyped-def]
    body = {"phone": "13812345678", "code": "123456"}  # no code was sent to this phone
    return client.post("/user/login", json=body, headers=headers)


def _unexpected(client, user, headers):  # type: ignore[no-untyped-def]
    return client.get("/test-only/boom", headers=headers)


ERRORS = [
    ("400 bad input", 400, "must be", _bad_request),
    ("401 a refused login, not a missing one", 401, "no valid code", _login_refused),
    ("403 not an admin", 403, "", _forbidden),
    ("404 no such shop", 404, "", _not_found),
    ("404 no such route", 404, "no such resource", _no_route),
    ("405 wrong method", 405, "method not allowed", _wrong_method),
    ("413 image too large", 413, "larger than", _too_large),
    ("413 request body too large", 413, "too large", _body_too_large),
    ("415 not an image", 415, "not an image", _not_an_image),
    ("429 rate limited", 429, "too many requests", _too_many),
    ("503 code sender down", 503, "", _unavailable),
    ("500 unexpected", 500, "internal server error", _unexpected),
]


@pytest.fixture
def compat_app(app_with):
    """An app whose every error class can be provoked; its rate limit: one upload a while."""
    app = app_with(
        rate_limit_enabled=True,
        rate_limit_upload="1,0.001/s",
        upload_max_bytes=1024,
    )

    @app.get("/test-only/boom")
    def _boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    add_shop(app.extensions["hmdp"])
    return app


@pytest.fixture
def user(compat_app, login_as) -> Callable[[], dict[str, str]]:
    """A new user's login headers per call (the users exist: uploads name their uploader)."""
    ids = iter(make_users(compat_app.extensions["hmdp"], 10, start=100))
    return lambda: login_as(next(ids))


@pytest.mark.parametrize(
    ("real", "message", "provoke"),
    [
        pytest.param(*e[1:], id=e[0], marks=[pytest.mark.answers_500] if e[1] == 500 else [])
        for e in ERRORS
    ],
)
def test_each_error_is_shown_as_200_with_its_real_status_in_a_header_and_the_metrics(
    compat_app, user, real, message, provoke
):
    client = compat_app.test_client()
    bare = provoke(client, user, {})
    assert bare.status_code == real, bare.get_data()  # the bare API: the real status
    assert REAL_STATUS_HEADER not in bare.headers
    assert COMPAT_HEADER in bare.headers.get_all("Vary")  # its form depends on the header
    before = _status_count(compat_app, real), _status_count(compat_app, 200)
    shown = provoke(client, user, COMPAT)
    _assert_shown_as_200(shown, real, message)
    assert shown.json["errorMsg"] == bare.json["errorMsg"]  # the same reason either way
    assert shown.json["data"] == bare.json["data"]
    after = _status_count(compat_app, real), _status_count(compat_app, 200)
    assert after[0] - before[0] == 1  # counted by its real status
    assert after[1] - before[1] == (real == 429)  # but _too_many's first upload


def test_a_second_order_is_already_ordered_with_its_id_in_data(app, client, login_as, services):
    add_shop(services)
    voucher_id = create_seckill(client, login_as(1, role="admin"), stock=5)
    buyer = {**login_as(5), **COMPAT}
    first = client.post(f"/voucher-order/seckill/{voucher_id}", headers=buyer)
    assert first.status_code == 200 and first.json["success"] is True
    assert REAL_STATUS_HEADER not in first.headers and "Vary" not in first.headers
    second = client.post(f"/voucher-order/seckill/{voucher_id}", headers=buyer)
    _assert_shown_as_200(second, 409, "already ordered")
    assert second.json["data"] == first.json["data"]  # the order id it got the first time


def test_a_wrong_login_code_is_shown_with_its_reason(app, client, services):
    """The login page shows why (a 401 that is no missing login: it would reload the page)."""
    phone = "13812345678"
    login_store.store_code(services.redis, phone, "123456", 120)
    wrong = client.post("/user/login", json={"phone": phone, "code": "654321"}, headers=COMPAT)
    _assert_shown_as_200(wrong, 401, "wrong code; 2 guesses left")
    right = client.post("/user/login", json={"phone": phone, "code": "123456"}, headers=COMPAT)
    assert right.status_code == 200 and right.json["success"] is True, right.json
    assert client.get("/user/me", headers={"authorization": right.json["data"]}).status_code == 200


def test_a_missing_login_stays_401(app_with, services, login_as):
    """No session, an unknown or expired one, a session whose user is gone: the login page."""
    app = app_with(compat_errors=True)
    client = app.test_client()
    gone = login_as(999)  # a session of a user with no row
    image = {"file": (io.BytesIO(PNG), "a.png")}
    response = client.post(
        "/upload/blog", data=image, headers=gone, content_type="multipart/form-data"
    )
    assert response.status_code == 401 and REAL_STATUS_HEADER not in response.headers
    assert response.json["errorMsg"] == "your account no longer exists"
    for headers in ({}, COMPAT, {"authorization": "no-such-token", **COMPAT}):
        response = client.get("/user/me", headers=headers)
        assert response.status_code == 401, response.get_data()
        assert REAL_STATUS_HEADER not in response.headers and "Vary" not in response.headers
        assert response.json == {
            "success": False,
            "errorMsg": "not logged in",
            "data": None,
            "total": None,
        }


def test_the_deployment_setting_and_the_request_header(app_with, seeded):
    """HMDP_COMPAT_ERRORS: compat for every request; a request's header decides for itself."""
    on = app_with(compat_errors=True).test_client()
    off = app_with().test_client()
    # the setting on: compat unless the request says 0
    _assert_shown_as_200(on.get("/shop/0"), 400, "must be")
    assert on.get("/shop/0", headers={COMPAT_HEADER: "0"}).status_code == 400
    # the setting off (the default): real statuses unless the request says 1
    assert off.get("/shop/0").status_code == 400
    _assert_shown_as_200(off.get("/shop/0", headers=COMPAT), 400, "must be")
    for odd in ("", "yes", "true ", "2"):  # only 1 and 0 are answers; else the setting
        assert off.get("/shop/0", headers={COMPAT_HEADER: odd}).status_code == 400
        assert on.get("/shop/0", headers={COMPAT_HEADER: odd}).status_code == 200
    # a success is the same answer in either mode
    plain, compat = off.get("/shop/1"), off.get("/shop/1", headers=COMPAT)
    assert plain.status_code == compat.status_code == 200
    assert plain.get_data() == compat.get_data()
    assert REAL_STATUS_HEADER not in compat.headers and "Vary" not in compat.headers


def test_the_access_line_keeps_the_real_status(app, client, access_lines):
    before = len(access_lines())
    assert client.get("/shop/0", headers=COMPAT).status_code == 200
    (line,) = access_lines()[before:]
    assert line["status"] == 400


def test_the_seckill_fast_path_s_own_503_is_a_compat_answer(app_with):
    """Redis away: the fast path answers the 503 itself (no second timeout through Flask)."""
    from cache.server import free_port
    from web.order_fastpath import SeckillFastPath

    app = app_with(redis_url=f"redis://127.0.0.1:{free_port()}/0", compat_errors=True)
    fast = app.wsgi_app
    while not isinstance(fast, SeckillFastPath):  # behind the shop fast path
        fast = fast.flask_wsgi
    reached_flask = []
    inner = fast.flask_wsgi
    fast.flask_wsgi = lambda environ, start: reached_flask.append(1) or inner(environ, start)
    response = app.test_client().post("/voucher-order/seckill/1", headers={"authorization": "t"})
    assert not reached_flask
    _assert_shown_as_200(response, 503, "service temporarily unavailable (cache)")
    assert response.headers["Retry-After"] == "1"
    assert _status_count(app, 503) == 1 and _status_count(app, 200) == 0
