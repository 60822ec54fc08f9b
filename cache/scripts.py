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
