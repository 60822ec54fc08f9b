"""Every error leaves as a JSON envelope with the right status."""

from typing import Annotated

import pytest
from flask import Blueprint
from pydantic import Field

from web.contract import contract
from web.envelope import Conflict, json_body, ok
from web.schemas import Query


def _assert_envelope(response, status):
    assert response.status_code == status
    assert response.is_json, response.data[:200]
    body = response.get_json()
    assert set(body) == {"success", "errorMsg", "data", "total"}
    return body


def test_healthz(client):
    body = _assert_envelope(client.get("/healthz"), 200)
    assert body["success"] is True and body["data"] == "ok"


def test_unknown_route_is_json_404(client):
    body = _assert_envelope(client.get("/no/such/route"), 404)
    assert body["success"] is False and body["errorMsg"]


def test_wrong_method_is_json_405_with_allow(client):
    response = client.delete("/healthz")
    body = _assert_envelope(response, 405)
    assert body["success"] is False
    assert "GET" in response.headers["Allow"]


@pytest.fixture
def probe_app(app):
    bp = Blueprint("probe", __name__)

    @bp.post("/probe/json")
    def echo():
        return ok(json_body())

    class NumberQuery(Query):
        n: Annotated[int, Field(ge=1)]

    @bp.get("/probe/int")
    @contract(query=NumberQuery)
    def number(query):
        return ok(query.n)

    @bp.get("/probe/conflict")
    def conflict():
        raise Conflict("sold out")

    @bp.get("/probe/boom")
    def boom():
        raise RuntimeError("secret internals")

    app.register_blueprint(bp)
    return app


@pytest.mark.parametrize(
    "data, message",
    [
        (b"{not json", "not valid JSON"),
        (b"", "must be a JSON object"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_json_bodies_are_400(probe_app, data, message):
    response = probe_app.test_client().post(
        "/probe/json", data=data, content_type="application/json"
    )
    body = _assert_envelope(response, 400)
    assert message in body["errorMsg"]


def test_good_json_body(probe_app):
    response = probe_app.test_client().post("/probe/json", json={"a": 1})
    assert _assert_envelope(response, 200)["data"] == {"a": 1}


@pytest.mark.parametrize("query, status", [("", 400), ("?n=x", 400), ("?n=0", 400), ("?n=3", 200)])
def test_int_query_parameters(probe_app, query, status):
    _assert_envelope(probe_app.test_client().get("/probe/int" + query), status)


def test_business_conflict_is_409(probe_app):
    body = _assert_envelope(probe_app.test_client().get("/probe/conflict"), 409)
    assert body["errorMsg"] == "sold out"


@pytest.mark.answers_500
def test_unexpected_error_is_500_json_without_trace(probe_app):
    response = probe_app.test_client().get("/probe/boom")
    body = _assert_envelope(response, 500)
    assert "secret" not in response.get_data(as_text=True)
    assert body["errorMsg"] == "internal server error"


@pytest.mark.parametrize(
    "data, error, total",
    [
        (None, None, None),
        ({"name": "小吃", "n": 1.5, "list": [1, None, True]}, None, 3),
        ("123456789012345678", None, None),
        (None, "sold out", None),
        ({"redis": {"ok": False, "error": 'x "quoted" \\ ü'}}, "not ready: redis", None),
    ],
)
def test_the_envelope_encoder_writes_what_flasks_json_provider_writes(app, data, error, total):
    from web.envelope import envelope, envelope_around, fail_bytes, ok_bytes

    fields = {"success": error is None, "errorMsg": error, "data": data, "total": total}
    with app.app_context():
        flask_bytes = app.json.response(fields).get_data()
    assert envelope(data, error, total).encode() == flask_bytes
    encoded = app.json.dumps(data, separators=(",", ":"))
    assert envelope_around(encoded, error, total).encode() == flask_bytes
    if error is None and total is None:
        assert ok_bytes(encoded) == flask_bytes
    if data is None and total is None and error is not None:
        assert fail_bytes(error) == flask_bytes
