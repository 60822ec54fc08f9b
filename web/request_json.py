"""The one JSON body parser of the app: bounded, strict, and it names the problem.

Every reader of a request body goes through Flask's ``request.get_json``
(the routes through :func:`web.envelope.json_body`, the rate-limit hook
through :func:`web.phones.named_phones`), which decodes with the app's JSON
provider (:class:`ApiJSONProvider`: :func:`loads`) and fails through the app's
request class (:class:`JsonRequest`), so that call is safe for any input:

* nesting deeper than :data:`MAX_DEPTH` is refused, and so is a body nested
  so deeply that the decoder gives up (``RecursionError``, which is not a
  ``ValueError`` and escaped ``get_json(silent=True)`` as a 500);
* numbers must be finite and integers must fit a signed 64-bit column:
  ``NaN``, ``Infinity``, ``1e400`` and 30-digit integers are refused before
  any validator sees them (validators still check each field's range);
* strings (keys too) must be storable (:func:`web.text.text_problem`):
  no lone surrogates, no NUL;
* the body must be UTF-8, and its Content-Type JSON (415 otherwise).

A failure is an :class:`~web.envelope.ApiError` (400 or 415) whose message
says what is wrong and where; a body above the app's size limit is werkzeug's
413 before any of this. The result (or the failure) is cached per request, so
the hook and the route parse a body once.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Request
from flask.json.provider import DefaultJSONProvider

from models.entities import MAX_ID

from .envelope import BadRequest, UnsupportedMediaType
from .text import text_problem

MAX_DEPTH = 32  # arrays/objects inside each other; our bodies use two
MIN_INT = -MAX_ID - 1  # a signed BIGINT
MAX_INT_DIGITS = 20  # a sign and 19 digits: longer cannot be a BIGINT


class JsonInputError(ValueError):
    """A body that is not JSON we accept; the message says why (and where)."""


def _parse_int(text: str) -> int:
    value = int(text) if len(text) <= MAX_INT_DIGITS else None
    if value is None or not MIN_INT <= value <= MAX_ID:
        raise JsonInputError(f"integer out of range (a signed 64-bit one): {text[:24]}")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError(f"number out of range: {text[:24]}")
    return value


def _parse_constant(name: str) -> float:
    raise JsonInputError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)


def _where(path: tuple[str | int, ...]) -> str:
    """A JSON path as the field names read: ``title``, ``images[2]``, ``[0].a``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "body"


def _check(value: Any) -> None:
    """Depth and storable strings of a decoded value, walked without recursion."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 0, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            problem = text_problem(node)
            if problem is not None:
                raise JsonInputError(f"'{_where(path)}' {problem}")
            continue
        if not isinstance(node, dict | list):
            continue
        if depth >= MAX_DEPTH:
            raise JsonInputError(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, item in node.items():
                problem = text_problem(key)
                if problem is not None:
                    raise JsonInputError(f"a key of '{_where(path)}' {problem}")
                stack.append((item, depth + 1, (*path, key)))
        else:
            stack.extend((item, depth + 1, (*path, i)) for i, item in enumerate(node))


def loads(data: bytes | str) -> Any:
    """Decode a request body; :class:`JsonInputError` (a ValueError) for anything refused."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonInputError("request body is not UTF-8") from None
    else:
        text = data
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise JsonInputError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except JsonInputError:
        raise
    except ValueError as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if hasattr(exc, "lineno") else ""
        message = getattr(exc, "msg", str(exc))
        raise JsonInputError(f"request body is not valid JSON: {message}{where}") from None
    # Only escapes (\u...) make a NUL or a surrogate, only brackets make depth:
    # a body with neither (nearly all) needs no walk.
    if "\\u" in text or text.count("[") + text.count("{") > MAX_DEPTH:
        _check(value)
    return value


class ApiJSONProvider(DefaultJSONProvider):
    """The app's JSON provider: Flask's, with :func:`loads` for reading.

    Flask hands its provider to each request as ``request.json_module``, which
    werkzeug's ``get_json`` decodes with, so this is where the parser goes in.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)


class JsonRequest(Request):
    """Flask's request whose ``get_json`` failures are envelopes (and 413 comes first).

    ``get_json(silent=True)`` returns None for a refused body (the rate-limit
    hook), ``get_json()`` raises the 400/415 that names the problem (the routes).
    """

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        """werkzeug's, after the size limit: a body too large is a 413 whatever its type."""
        self.get_data(cache=True)
        return super().get_json(force=force, silent=silent, cache=cache)

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:
            raise UnsupportedMediaType(
                "Content-Type must be application/json for a JSON body"
                f" (got {(self.mimetype or 'none')[:60]!r})"
            )
        if isinstance(e, JsonInputError):
            raise BadRequest(str(e))
        raise BadRequest("request body is not valid JSON")
