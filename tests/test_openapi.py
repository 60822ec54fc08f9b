"""GET /openapi.json holds every route of the URL map, and GET /docs shows it offline.

The document is written from the routes' contracts (web/openapi.py): each rule
of ``app.url_map`` (but Swagger UI's own files) is one path and method of it,
with every variable of the rule as a path parameter, and nothing is documented
that the app does not route.
"""

from __future__ import annotations

import re

import pytest

from web.auth import ACCESS_ATTR
from web.openapi import documented_rules, openapi_path
from web.ratelimit import ROUTE_LIMITS

METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def doc(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.json


def _operations(doc):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert method in METHODS, (path, method)
            yield path, method, operation


def test_every_route_is_documented_and_nothing_else(app, doc):
    routed = {
        (openapi_path(rule.rule), method.lower())
        for rule in documented_rules(app)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, method, _ in _operations(doc)}
    assert routed - documented == set(), "routes the document lacks"
    assert documented - routed == set(), "documented paths the app does not route"
    assert len(routed) >= 38


def test_every_rule_variable_is_a_path_parameter(app, doc):
    for rule in documented_rules(app):
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = doc["paths"][openapi_path(rule.rule)][method.lower()]
            names = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            assert names == set(rule.arguments), rule.rule
            assert all(p["schema"] for p in operation.get("parameters", ())), rule.rule


def test_statuses_login_and_envelope(app, doc):
    by_endpoint = {op["operationId"]: (path, op) for path, _, op in _operations(doc)}
    for rule in documented_rules(app):
        path, operation = by_endpoint[rule.endpoint]
        access = getattr(app.view_functions[rule.endpoint], ACCESS_ATTR, None)
        statuses = set(operation["responses"])
        assert "200" in statuses, path
        if access is not None:
            assert {"401"} <= statuses and operation["security"] == [{"session": []}], path
        if access == "admin":
            assert "403" in statuses, path
        if rule.endpoint in ROUTE_LIMITS:
            assert "429" in statuses, path
        if "requestBody" in operation and "application/json" in operation["requestBody"]["content"]:
            assert {"400", "413", "415"} <= statuses, path
        if "{" in path:
            assert "404" in statuses, path
        ok = operation["responses"]["200"]["content"]
        if "application/json" in ok and path != "/openapi.json":
            schema = ok["application/json"]["schema"]
            assert schema["required"] == ["success", "errorMsg", "data", "total"], path
            assert schema["properties"]["success"] == {"const": True}, path
    scheme = doc["components"]["securitySchemes"]["session"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "authorization"}
    assert doc["openapi"] == "3.1.0"


def test_each_route_documents_its_data_and_bodies(doc):
    paths = doc["paths"]
    shop = paths["/shop/{shop_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert shop["schema"]["properties"]["data"] == {"$ref": "#/components/schemas/ShopData"}
    order = paths["/voucher-order/seckill/{voucher_id}"]["post"]["responses"]
    assert set(order) >= {"200", "401", "404", "409", "429", "503"}
    conflict = order["409"]["content"]["application/json"]["schema"]["properties"]["data"]
    assert {"type": "null"} in conflict["anyOf"]  # the order id of a second order, or null
    body = paths["/blog"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    blog = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert blog["properties"]["title"]["maxLength"] == 255
    assert set(blog["required"]) == {"shopId", "title", "content"}
    shop_fields = doc["components"]["schemas"]["NewShopBody"]["properties"]
    assert {"type": "integer", "minimum": 0, "maximum": 50} in shop_fields["score"]["anyOf"]
    assert shop_fields["name"]["maxLength"] == 128
    assert "multipart/form-data" in paths["/upload/blog"]["post"]["requestBody"]["content"]
    assert set(paths["/shop"]["put"]["responses"]) >= {"200", "202", "403", "404"}


def test_the_docs_page_reads_the_document_from_our_own_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "a CDN or other host"
    for asset in re.findall(r"(?:src|href)=\"(/docs/static/[^\"]+)\"", html):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.data) > 1000, asset
    assert client.get("/docs/static/no-such-file.js").status_code == 404
