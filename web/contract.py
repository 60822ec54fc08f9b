"""One declaration per route: its path, query and body schemas, its data and its errors.

``@contract(...)`` on a view says what the route takes and answers. The same
declaration validates the request (here) and writes the route into the
OpenAPI document (web/openapi.py), so the two cannot drift apart::

    @bp.post("/blog")
    @login_required
    @contract(body=BlogBody, data=int, errors={404: "no such shop"})
    def publish(body: BlogBody) -> Response: ...

The view receives the validated models as ``path``, ``query`` and ``body``.
A request that does not fit is a 400 envelope naming the field (a path id
that cannot exist: 404), before the view runs; the body is read by
:func:`web.envelope.json_body`, the one place a JSON body is parsed. The auth
and rate-limit hooks run before this (a stranger learns nothing about a
body's rules). ``validate=False`` declares a hot route without a per-request
check (the seckill order, ``GET /shop/{id}``): its view checks with the same
types' functions itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from annotated_types import Ge, Le
from flask import request
from pydantic import BaseModel, ValidationError

from .envelope import ApiError, BadRequest, NotFound, json_body
from .schemas import NOT_FOUND, WHOLE

F = TypeVar("F", bound=Callable[..., Any])
ATTR = "_hmdp_contract"
NO_DATA = object()  # a route whose success carries data = null


@dataclass(frozen=True)
class Contract:
    """What one route takes and answers (see :func:`contract`)."""

    path: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_optional: bool = False
    data: Any = NO_DATA
    errors: Mapping[int, str] = field(default_factory=dict)
    error_data: Mapping[int, Any] = field(default_factory=dict)
    form: type[BaseModel] | None = None  # multipart, read by the view itself
    content: Mapping[str, Any] | None = None  # a success that is not an envelope (files)
    accepted: bool = False  # a 202 success too: done in part, the rest by a task
    offline: bool = False  # needs neither Redis nor the database: never a 503
    validate: bool = True
    summary: str = ""
    description: str = ""


def contract(
    *,
    path: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    body_optional: bool = False,
    data: Any = NO_DATA,
    errors: Mapping[int, str] | None = None,
    error_data: Mapping[int, Any] | None = None,
    form: type[BaseModel] | None = None,
    content: Mapping[str, Any] | None = None,
    accepted: bool = False,
    offline: bool = False,
    validate: bool = True,
) -> Callable[[F], F]:
    """Declare a route: ``body_optional`` a body it may go without (None then); ``data`` is the type of a success's data; ``errors`` the statuses
    the view itself answers (those of the input, the login, the rate limit and the
    backends are added by the document); ``error_data`` a failure's data where it is
    not null (the 409 of an order carries the order id)."""

    def decorate(view: F) -> F:
        doc = (view.__doc__ or "").strip().replace("``", "`")  # reST literals as Markdown
        summary, _, description = doc.partition("\n")
        spec = Contract(
            path=path,
            query=query,
            body=body,
            body_optional=body_optional,
            data=data,
            errors=dict(errors or {}),
            error_data=dict(error_data or {}),
            form=form,
            content=content,
            accepted=accepted,
            offline=offline,
            validate=validate,
            summary=summary.strip(),
            description=description.strip(),
        )
        if not validate:
            setattr(view, ATTR, spec)
            return view
        query_names = tuple(
            info.alias or name for name, info in (query.model_fields.items() if query else ())
        )

        @wraps(view)
        def checked(**view_args: Any) -> Any:
            kwargs: dict[str, Any] = {}
            if path is not None:
                kwargs["path"] = _validated(path, view_args, "path")
            else:
                kwargs.update(view_args)
            if query is not None:
                kwargs["query"] = _validated(query, _query_values(query_names), "query")
            if body is not None:
                given = not body_optional or request.content_length or request.data
                kwargs["body"] = _validated(body, json_body(), "body") if given else None
            return view(**kwargs)

        setattr(checked, ATTR, spec)
        return checked  # type: ignore[return-value]

    return decorate


def _query_values(names: tuple[str, ...]) -> dict[str, str]:
    """The declared parameters of the query string; "" is not given, twice is a 400."""
    given = {}
    for name in names:
        values = request.args.getlist(name)
        if len(values) > 1:
            raise BadRequest(f"query parameter '{name}' is given more than once")
        if values and values[0] != "":
            given[name] = values[0]
    return given


def contract_of(view: Callable[..., Any]) -> Contract | None:
    """The contract a view declared, if any."""
    return getattr(view, ATTR, None)


def _validated(model: type[BaseModel], values: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise refusal(model, error, where) from None


# --- what the client is told --------------------------------------------------------------

_PROBLEMS = {
    "missing": "is required",
    "string_type": "must be a string",
    "string_unicode": "must not contain a lone surrogate: it cannot be stored",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "string_pattern_mismatch": "is not in the expected form",
}
_LABELS = {"body": "'{}'", "query": "query parameter '{}'", "path": "path parameter '{}'"}


def refusal(model: type[BaseModel], error: ValidationError, where: str) -> ApiError:
    """The 400 (or 404) that says what is wrong with the first field that is wrong."""
    problems = error.errors(include_url=False)
    unknown = sorted(str(e["loc"][0]) for e in problems if e["type"] == "extra_forbidden")
    if unknown:
        return BadRequest(f"unknown field(s): {', '.join(unknown)}")
    first = problems[0]
    if first["type"] == NOT_FOUND:
        return NotFound(first["msg"])
    if first["type"] == WHOLE:
        return BadRequest(first["msg"])
    loc = first["loc"]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return BadRequest(f"{_LABELS[where].format(name)} {_problem(model, first)}")


def _problem(model: type[BaseModel], error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = _bounds(model, error["loc"])
        if low is not None and high is not None:
            return f"must be between {_num(low)} and {_num(high)}"
        return (
            f"must be >= {ctx['ge']}" if kind == "greater_than_equal" else f"must be <= {ctx['le']}"
        )
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be blank" if n == 1 else f"must be at least {n} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind.startswith("hmdp_"):
        return error["msg"]  # our own validators phrase the problem
    return f"is not valid ({error['msg']})"


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, Any]:
    info = model.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    low = high = None
    for rule in info.metadata if info is not None else ():
        if isinstance(rule, Ge):
            low = rule.ge
        elif isinstance(rule, Le):
            high = rule.le
    return low, high
