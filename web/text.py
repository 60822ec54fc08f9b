"""The one rule for text the API accepts: what the database can store.

The tables are utf8mb4 (MySQL) or SQLite text: every Unicode scalar value
fits, but a lone surrogate (``"\\ud800"``, which JSON's ``\\u`` escapes can
produce) cannot be encoded at all and the driver fails on it, and a NUL is
cut off or refused depending on the layer. So a string with either is refused
at the request boundary, as a 400 naming the field, before anything is
written: by the JSON body parser for every string of a body
(web/request_json.py) and by the request schemas for each field they declare,
query parameters too (web/schemas.py).
"""

from __future__ import annotations


def text_problem(value: str) -> str | None:
    """What makes ``value`` unstorable (a phrase to follow the field's name), or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        return f"must not contain a lone surrogate (U+{code:04X}): it cannot be stored"
    return None
