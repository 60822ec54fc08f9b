"""Every route's access is decided, and enforced, from the app's own URL map.

* Each route whose view is marked (@login_required / @admin_required) answers
  401 JSON without a session — one parametrised test over ``app.url_map``, so
  a new protected route is covered the moment it is registered.
* The public (unmarked) routes must be exactly the allow-list below: adding a
  route without a marker fails here until someone decides it is public.
* Contract routes that must be protected are checked to carry the right marker.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from flask import Blueprint
from support.social import make_users

from settings import Settings
from web.auth import admin_required, login_required, required_access
from web.envelope import ok

# (method, path with {} for each parameter) -> blueprint that owns it; None:
# optional (may or may not be mounted). Entries of blueprints that have no
# routes yet are not required to exist (their modules land later).
PUBLIC_ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): "health",
    ("GET", "/readyz"): "health",
    ("POST", "/user/code"): "users",
    ("POST", "/user/login"): "users",
    ("GET", "/user/{}"): "users",
    ("GET", "/user/info/{}"): "users",
    ("GET", "/shop/{}"): "shops",
    ("GET", "/shop/of/type"): "shops",
    ("GET", "/shop/of/name"): "shops",
    ("GET", "/shop-type/list"): "shops",
    ("GET", "/shop/{}/uv"): "stats",  # distinct visitors of a shop (web/stats.py)
    ("GET", "/voucher/list/{}"): "vouchers",
    ("GET", "/blog/{}"): "blogs",
    ("GET", "/blog/likes/{}"): "blogs",
    ("GET", "/blog/hot"): "blogs",
    ("GET", "/blog/of/user"): "blogs",
    ("GET", "/imgs/{}"): "uploads",  # the images root (uploads and the front end's images)
    ("GET", "/metrics"): None,  # Prometheus scrape endpoint, if mounted
    ("GET", "/openapi.json"): "openapi",  # the API's document (web/openapi.py)
    ("GET", "/docs"): "openapi",  # the document in a browser
    ("GET", "/docs/static/{}"): "openapi",  # the docs page's files
}

# Contract routes that need a session (hmdp-api.md), with the access they need.
PROTECTED_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/user/logout"): "user",
    ("GET", "/user/me"): "user",
    ("POST", "/user/sign"): "user",
    ("GET", "/user/sign/count"): "user",
    ("POST", "/shop"): "admin",
    ("PUT", "/shop"): "admin",
    ("POST", "/voucher"): "admin",
    ("POST", "/voucher/seckill"): "admin",
    ("POST", "/voucher-order/seckill/{}"): "user",
    ("POST", "/blog"): "user",
    ("PUT", "/blog/like/{}"): "user",
    ("GET", "/blog/of/me"): "user",
    ("GET", "/blog/of/follow"): "user",
    ("PUT", "/follow/{}/{}"): "user",
    ("GET", "/follow/or/not/{}"): "user",
    ("GET", "/follow/common/{}"): "user",
    ("POST", "/upload/blog"): "user",
    ("GET", "/upload/blog/delete"): "user",
}


def _shape(rule_text: str) -> str:
    return re.sub(r"<[^>]+>", "{}", rule_text)


def _routes(app) -> list[tuple[str, str, str, str | None, str]]:
    """(method, shape, endpoint, access, concrete path) for every rule of ``app``."""
    routes = []
    with app.app_context():
        for rule in app.url_map.iter_rules():
            _, path = rule.build({name: 1 for name in rule.arguments}, append_unknown=False)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                routes.append(
                    (method, _shape(rule.rule), rule.endpoint, required_access(rule.endpoint), path)
                )
    return routes


def _collection_app():
    """An app built only to read its URL map at collection time (opens no connection)."""
    from web import create_app

    scratch = Path(tempfile.gettempdir()) / "hmdp-route-collection"
    return create_app(
        Settings(
            redis_url="redis://127.0.0.1:1/0",
            database_url=f"sqlite:///{scratch / 'never-opened.db'}",
            var_dir=scratch,
            rate_limit_enabled=False,
        )
    )


MARKED = [r for r in _routes(_collection_app()) if r[3] is not None]


def _envelope(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.is_json, response.data[:300]
    body = response.get_json()
    assert set(body) == {"success", "errorMsg", "data", "total"}
    assert body["success"] is False and body["errorMsg"]
    return body


@pytest.mark.parametrize(
    "method, shape, endpoint, access, path", MARKED, ids=[f"{r[0]} {r[1]}" for r in MARKED]
)
def test_protected_route_refuses_anonymous_requests(
    app, login_as, method, shape, endpoint, access, path
):
    # The app under test has the same route (same code, real backends).
    adapter = app.url_map.bind("localhost")
    assert adapter.match(path, method=method)[0] == endpoint
    client = app.test_client()
    _envelope(client.open(path, method=method), 401)
    _envelope(client.open(path, method=method, headers={"authorization": "no-such-token"}), 401)
    if access == "admin":  # an existing user who is no admin (web/auth.is_admin reads the row)
        make_users(app.extensions["hmdp"], 1, start=5)
        _envelope(client.open(path, method=method, headers=login_as(5)), 403)


def test_there_are_protected_routes_to_check():
    assert {(r[0], r[1]) for r in MARKED} >= {("GET", "/user/me"), ("POST", "/user/logout")}


def test_public_routes_are_exactly_the_allow_list(app):
    public = {(method, shape) for method, shape, _, access, _ in _routes(app) if access is None}
    unlisted = public - set(PUBLIC_ROUTES)
    assert not unlisted, (
        f"routes without @login_required/@admin_required: {sorted(unlisted)}; "
        "mark them, or add them to PUBLIC_ROUTES if they really are public"
    )
    blueprints = {endpoint.split(".")[0] for _, _, endpoint, _, _ in _routes(app)}
    missing = {
        route
        for route, blueprint in PUBLIC_ROUTES.items()
        if blueprint in blueprints and route not in public
    }
    assert not missing, f"allow-listed public routes that are missing or marked: {sorted(missing)}"


@pytest.mark.parametrize("route", sorted(PROTECTED_ROUTES), ids=lambda r: f"{r[0]} {r[1]}")
def test_contract_route_has_the_contract_access(app, route):
    """Each route of the contract exists once and carries the contract's marker."""
    found = [access for method, shape, _, access, _ in _routes(app) if (method, shape) == route]
    assert found == [PROTECTED_ROUTES[route]]


@pytest.fixture
def probe_app(app):
    bp = Blueprint("probe_auth", __name__)

    @bp.get("/probe/admin")
    @admin_required
    def admin_only():
        return ok("admin")

    @bp.get("/probe/user")
    @login_required
    def user_only():
        return ok("user")

    app.register_blueprint(bp)
    return app


def test_admin_routes_401_without_session_403_for_users(probe_app, login_as):
    client = probe_app.test_client()
    make_users(probe_app.extensions["hmdp"], 1, start=5)
    _envelope(client.get("/probe/admin"), 401)
    _envelope(client.get("/probe/admin", headers=login_as(5)), 403)
    response = client.get("/probe/admin", headers=login_as(1, role="admin"))
    assert response.status_code == 200 and response.get_json()["data"] == "admin"
    assert client.get("/probe/user", headers=login_as(5)).status_code == 200


def test_a_corrupt_session_is_no_session(probe_app, redis_client):
    redis_client.hset("login:token:broken", mapping={"id": "not-a-number"})
    _envelope(probe_app.test_client().get("/probe/user", headers={"authorization": "broken"}), 401)


def test_cors_preflight_on_a_protected_route_needs_no_token(client):
    response = client.options("/user/me")
    assert response.status_code == 200
    assert "GET" in response.headers["Allow"]
