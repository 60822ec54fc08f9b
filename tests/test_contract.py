"""The route schemas (web/contract.py): a request that does not fit is a 400 naming the field.

Strings are checked for length and for characters the database cannot store,
numbers for range, instants for range before any conversion; nothing is
written. Every route of the app declares a contract.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from support.social import make_shop, make_users

from models.entities import Blog, Shop, Voucher
from web.contract import contract_of
from web.openapi import documented_rules


@pytest.fixture
def world(services):
    make_users(services, 3)
    make_shop(services, 1)
    return services


def _count(services, entity) -> int:
    with services.db.sessions() as session:
        return session.scalar(select(func.count()).select_from(entity))


def _send(client, method: str, path: str, body: object, headers: dict) -> object:
    """A JSON body as a client writes it: lone surrogates as \\u escapes (ASCII JSON)."""
    return client.open(
        path,
        method=method,
        data=json.dumps(body),
        headers={**headers, "Content-Type": "application/json"},
    )


def _refused(response, status: int = 400) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert set(body) == {"success", "errorMsg", "data", "total"}
    assert body["success"] is False and body["data"] is None
    return body["errorMsg"]


GOOD_BLOG = {"shopId": 1, "title": "t", "content": "c"}
GOOD_VOUCHER = {
    "shopId": 1,
    "title": "v",
    "payValue": 100,
    "actualValue": 200,
    "stock": 10,
    "beginTime": "2030-01-01T00:00:00",
    "endTime": "2030-01-02T00:00:00",
}
GOOD_SHOP = {"name": "n", "typeId": 1, "x": 120.1, "y": 30.2}


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("title", "a\ud800b", "surrogate"),
        ("title", "a\x00b", "NUL"),
        ("content", "\udfff", "surrogate"),
        ("title", "x" * 256, "at most 255"),
        ("title", "   ", "blank"),
        ("title", 5, "string"),
        ("shopId", "1", "integer"),
    ],
)
def test_blog_bodies_name_the_field(client, world, login_as, field, value, says):
    message = _refused(_send(client, "POST", "/blog", {**GOOD_BLOG, field: value}, login_as(2)))
    assert f"'{field}'" in message and says in message, message
    assert _count(world, Blog) == 0


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("beginTime", "0001-01-01T00:00:00+05:00", "out of range"),
        ("endTime", "9999-12-31T23:59:59-05:00", "out of range"),
        ("beginTime", "1999-12-31T23:59:59", "out of range"),
        ("beginTime", "yesterday", "ISO-8601"),
        ("title", "\ud800", "surrogate"),
        ("subTitle", "a\x00", "NUL"),
        ("stock", 0, "between 1 and"),
        ("payValue", 10**13, "between 0 and"),
        ("shopId", 0, "between 1 and 9223372036854775807"),
    ],
)
def test_seckill_voucher_bodies_name_the_field(client, world, login_as, field, value, says):
    body = {**GOOD_VOUCHER, field: value}
    message = _refused(_send(client, "POST", "/voucher/seckill", body, login_as(1, "admin")))
    assert f"'{field}'" in message and says in message, message
    assert _count(world, Voucher) == 0


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("address", "\ud800", "surrogate"),
        ("area", "a\nb", "control characters"),
        ("name", "x\x07", "control characters"),
        ("x", 181, "between -180 and 180"),
        ("score", 1.5, "integer"),
        ("typeId", True, "number"),
    ],
)
def test_shop_bodies_name_the_field(client, world, login_as, field, value, says):
    before = _count(world, Shop)
    body = {**GOOD_SHOP, field: value}
    message = _refused(_send(client, "POST", "/shop", body, login_as(1, "admin")))
    assert f"'{field}'" in message and says in message, message
    assert _count(world, Shop) == before


def test_unknown_shop_fields_are_named(client, world, login_as):
    body = {**GOOD_SHOP, "owner": "me", "colour": "red"}
    message = _refused(client.post("/shop", json=body, headers=login_as(1, "admin")))
    assert message == "unknown field(s): colour, owner"


@pytest.mark.parametrize(
    "path, says",
    [
        ("/blog/hot?current=0", "query parameter 'current' must be between 1 and 10000"),
        ("/blog/hot?current=x", "query parameter 'current' must be an integer"),
        ("/blog/hot?current=1&current=2", "query parameter 'current' is given more than once"),
        ("/shop/of/type?typeId=1&x=1", "query parameter"),
        ("/shop/of/type?typeId=1&x=nan&y=1", "query parameter 'x' must be a finite number"),
        ("/shop/of/name?name=a%00b", "query parameter 'name' must not contain NUL"),
        ("/blog/of/user", "query parameter 'id' is required"),
        ("/shop/1/uv?date=2024-13-01", "query parameter 'date' must be YYYY-MM-DD"),
    ],
)
def test_queries_name_the_parameter(client, world, path, says):
    assert says in _refused(client.get(path))


def test_path_ids_that_cannot_exist_are_404_and_non_numbers_400(client, world):
    assert _refused(client.get("/blog/99999999999999999999"), 404) == "no such blog"
    assert "blog id" in _refused(client.get("/blog/x1"), 400)


def test_a_valid_body_still_works(client, world, login_as):
    response = client.post("/blog", json={**GOOD_BLOG, "title": "  好 "}, headers=login_as(2))
    assert response.status_code == 200, response.json
    with world.db.sessions() as session:
        assert session.get(Blog, response.json["data"]).title == "好"


def test_every_route_declares_its_contract(app):
    # All but Swagger UI's own files (/docs/static/...), which are no API.
    missing = [
        rule.rule
        for rule in documented_rules(app)
        if contract_of(app.view_functions[rule.endpoint]) is None
    ]
    assert missing == []
    assert len(list(documented_rules(app))) == len(list(app.url_map.iter_rules())) - 1
