"""The OpenAPI 3.1 document of the app, written from the routes' contracts, and its docs page.

``GET /openapi.json`` walks ``app.url_map``: every rule's contract (web/contract.py)
gives its parameters, body and data; the envelope around each route's data, the
failure envelope, the ``authorization`` header and the statuses every route
shares (bad input, login, rate limit, backends down) are added here from what the
app itself declares (the access markers of web/auth.py, the rate-limit table of
web/ratelimit.py, the URL and header limits of web/request_limits.py). pydantic writes the JSON Schemas (2020-12, the dialect of
OpenAPI 3.1). The document is built once per app, on first request.

``GET /docs`` is Swagger UI reading it, from the assets the ``swagger-ui-py``
package ships (``/docs/static/...``): no CDN, a browser offline can read it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Flask, Response, current_app, send_from_directory
from pydantic import BaseModel, TypeAdapter
from swagger_ui.core import SWAGGER_UI_PY_ROOT

from .auth import ACCESS_ATTR
from .contract import NO_DATA, Contract, contract, contract_of
from .envelope import MIMETYPE, json_response
from .errors import REDIS_DOWN
from .ratelimit import ROUTE_LIMITS

bp = Blueprint("openapi", __name__)

EXTENSION = "hmdp_openapi"
REF = "#/components/schemas/{model}"
SECURITY = "session"
DOCS_STATIC = SWAGGER_UI_PY_ROOT / "static"
_RULE_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

# What each shared status means, when the route itself does not say more.
_SHARED = {
    400: "bad input: the message names the field",
    401: "not logged in (no, an unknown or an expired `authorization` token)",
    403: "admin only",
    404: "no such resource",
    413: "request body too large",
    414: "URL too long",
    415: "not `application/json`",
    429: "rate limited (`Retry-After`, `X-RateLimit-*`)",
    431: "request headers too large",
    503: f"Redis or the database unavailable or stalled (`Retry-After`): {REDIS_DOWN!r}, ...",
}


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: ``/user/<int:user_id>`` -> ``/user/{user_id}``."""
    return _RULE_VARIABLE.sub(r"{\1}", rule)


class _Schemas:
    """JSON Schemas of the contracts' types, their models gathered as components."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, kind: Any) -> dict[str, Any]:
        """The schema of ``kind``; a model (and every model in it) as a reference."""
        schema = self._inline(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and "$ref" not in schema:
            self._keep(kind.__name__, schema)
            return {"$ref": REF.format(model=kind.__name__)}
        return schema

    def _inline(self, kind: Any) -> dict[str, Any]:
        schema = TypeAdapter(kind).json_schema(ref_template=REF)
        for name, definition in schema.pop("$defs", {}).items():
            self._keep(name, definition)
        return schema

    def _keep(self, name: str, schema: dict[str, Any]) -> None:
        if self.components.setdefault(name, schema) != schema:
            raise ValueError(f"two schemas are named {name!r}: rename one")

    def parameters(self, model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
        if model is None:
            return []
        schema = self._inline(model)
        required = set(schema.get("required", ()))
        found = []
        for name, prop in schema.get("properties", {}).items():
            prop = _without_null(prop)
            description = prop.pop("description", None)
            prop.pop("title", None)
            parameter = {
                "name": name,
                "in": where,
                "required": where == "path" or name in required,
                "schema": prop,
            }
            if where == "query" and not parameter["required"]:
                parameter["allowEmptyValue"] = True  # "?name=": not given (web/contract.py)
            if description:
                parameter["description"] = description
            found.append(parameter)
        return found


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without its ``null`` branch: a query string has no null, only absence."""
    branches = [b for b in prop.get("anyOf", ()) if b != {"type": "null"}]
    if "anyOf" in prop and len(branches) == 1:
        prop = {**branches[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
    return {k: v for k, v in prop.items() if not (k == "default" and v is None)}


def _envelope(data: dict[str, Any], success: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "errorMsg", "data", "total"],
        "properties": {
            "success": {"const": success},
            "errorMsg": {"type": "null"} if success else {"type": "string"},
            "data": data,
            "total": {"type": ["integer", "null"]},
        },
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {MIMETYPE: {"schema": schema}}}


def _statuses(spec: Contract, endpoint: str, access: str | None) -> dict[int, str]:
    """Every failure status of a route: its own and those it shares with others."""
    statuses: dict[int, str] = {414: _SHARED[414], 431: _SHARED[431]}  # web/request_limits.py
    if spec.path or spec.query or spec.body or spec.form:
        statuses[400] = _SHARED[400]
    if spec.path:
        statuses[404] = _SHARED[404]
    if spec.body:
        statuses[413] = _SHARED[413]
        statuses[415] = _SHARED[415]
    if spec.form:
        statuses[413] = _SHARED[413]
    if access is not None:
        statuses[401] = _SHARED[401]
    if access == "admin":
        statuses[403] = _SHARED[403]
    if endpoint in ROUTE_LIMITS:
        statuses[429] = _SHARED[429]
    if not spec.offline:
        statuses[503] = _SHARED[503]
    statuses.update(spec.errors)
    return dict(sorted(statuses.items()))


def _operation(
    schemas: _Schemas, rule: Any, method: str, view: Any, spec: Contract
) -> dict[str, Any]:
    access = getattr(view, ACCESS_ATTR, None)
    endpoint = rule.endpoint
    operation: dict[str, Any] = {
        "operationId": f"{endpoint}.{method.lower()}" if len(_methods(rule)) > 1 else endpoint,
        "tags": [endpoint.partition(".")[0] if "." in endpoint else "app"],
        "summary": spec.summary or endpoint,
    }
    if spec.description:
        operation["description"] = spec.description
    parameters = schemas.parameters(spec.path, "path") + schemas.parameters(spec.query, "query")
    documented = {p["name"] for p in parameters if p["in"] == "path"}
    for name in rule.arguments - documented:  # a rule variable its contract did not type
        parameters.append({"name": name, "in": "path", "required": True, "schema": {}})
    if parameters:
        operation["parameters"] = parameters
    if spec.body is not None:
        operation["requestBody"] = {
            "required": not spec.body_optional,
            **_json(schemas.of(spec.body)),
        }
    elif spec.form is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": schemas.of(spec.form)}},
        }
    operation["security"] = [{SECURITY: []}] if access else [{}, {SECURITY: []}]
    if spec.content is not None:
        success = {"description": "OK", "content": dict(spec.content)}
    else:
        data = {"type": "null"} if spec.data is NO_DATA else schemas.of(spec.data)
        success = {"description": "OK", **_json(_envelope(data, True))}
    responses: dict[str, Any] = {"200": success}
    if spec.accepted:
        responses["202"] = {**success, "description": "accepted: the rest is done by a task"}
    for status, description in _statuses(spec, endpoint, access).items():
        failure: dict[str, Any] = {"$ref": REF.format(model="Failure")}
        if status in spec.error_data:
            failure = _envelope(schemas.of(spec.error_data[status]), False)
        responses[str(status)] = {
            "description": description or HTTPStatus(status).phrase,
            **_json(failure),
        }
    operation["responses"] = responses
    return operation


def _methods(rule: Any) -> list[str]:
    return sorted(m for m in rule.methods if m not in ("HEAD", "OPTIONS"))


def documented_rules(app: Flask) -> Iterator[Any]:
    """The URL rules the document describes: all but the docs page's assets."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "openapi.docs_static":  # Swagger UI's own files
            yield rule


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes (ValueError for a route without a contract)."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for rule in documented_rules(app):
        view = app.view_functions[rule.endpoint]
        spec = contract_of(view)
        if spec is None:
            raise ValueError(f"{rule.rule} ({rule.endpoint}) declares no contract")
        item = paths.setdefault(openapi_path(rule.rule), {})
        for method in _methods(rule):
            item[method.lower()] = _operation(schemas, rule, method, view, spec)
    schemas.components["Failure"] = _envelope({"type": "null"}, False)
    try:
        release = version("hmdp-py")
    except PackageNotFoundError:  # a source tree that was never installed
        release = "0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hmdp-py",
            "version": release,
            "description": (
                "The hmdp HTTP API. Every answer is the envelope "
                "`{success, errorMsg, data, total}`; errors carry their HTTP status too "
                "(or HTTP 200 with the real status in `X-Hmdp-Status`, in the hmdp "
                "compatibility mode: `X-Hmdp-Compat: 1`)."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                SECURITY: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "authorization",
                    "description": "the token POST /user/login answered, raw (no scheme)",
                }
            },
        },
    }


def document(app: Flask) -> dict[str, Any]:
    """The app's document, built on first use."""
    built = app.extensions.get(EXTENSION)
    if built is None:
        built = app.extensions[EXTENSION] = build_document(app)
    return built


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hmdp-py API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
</script>
</body>
</html>
"""


@bp.get("/openapi.json")
@contract(content={MIMETYPE: {"schema": {"type": "object"}}}, offline=True)
def openapi_json() -> Response:
    """This document."""
    return json_response(json.dumps(document(current_app), ensure_ascii=False))


@bp.get("/docs")
@contract(content={"text/html": {"schema": {"type": "string"}}}, offline=True)
def docs() -> Response:
    """The API documentation for a browser (Swagger UI over /openapi.json)."""
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:name>")
def docs_static(name: str) -> Response:
    """Swagger UI's files, as the swagger-ui-py package ships them."""
    return send_from_directory(DOCS_STATIC, name, max_age=3600)
