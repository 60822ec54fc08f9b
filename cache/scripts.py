"""Every Lua script lives in ``lua/NAME.lua``; this loads and registers them.

redis-py's ``Script`` runs EVALSHA and falls back to EVAL on NOSCRIPT, so a
Redis restart (script cache gone) is handled without our code noticing.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"


@cache
def lua_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` (read once per process)."""
    path = LUA_DIR / f"{name}.lua"
    if not path.is_file():
        raise FileNotFoundError(f"no Lua script {name!r} in {LUA_DIR}")
    return path.read_text()


def load_script(client: redis.Redis, name: str) -> Script:
    """A callable script bound to ``client``: ``script(keys=[...], args=[...])``."""
    return client.register_script(lua_source(name))


@cache
def composed_source(name: str, parts: tuple[str, ...]) -> str:
    """``lua/<name>.lua`` preceded by each of ``parts`` as a local function of (KEYS, ARGV).

    One script file stays one job: a script that needs what two others do calls
    them as functions instead of copying their text (a Lua script cannot call
    another script). Each part runs with the KEYS and ARGV it is given.
    """
    functions = [f"local function {part}(KEYS, ARGV)\n{lua_source(part)}\nend\n" for part in parts]
    return "".join(functions) + lua_source(name)


def load_composed(client: redis.Redis, name: str, parts: tuple[str, ...]) -> Script:
    """:func:`load_script` for a script built by :func:`composed_source`."""
    return client.register_script(composed_source(name, parts))
