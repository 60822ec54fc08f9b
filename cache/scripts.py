"""Every Lua script lives in ``lua/NAME.lua``; this loads and registers them.

The one place scripts are registered: :func:`load_script` and
:func:`load_composed` register a script once per client and hand back the same
``Script`` afterwards (as redis-py's ``Lock`` registers its scripts once), so
callers may ask for a script on every call. A client keeps its scripts in an
attribute of its own (``_hmdp_scripts``): they live and die with it, and a
``Script`` is bound to the client it was registered with.

redis-py's ``Script`` runs EVALSHA and falls back to EVAL on NOSCRIPT, so a
Redis restart (script cache gone) is handled without our code noticing.

``lua/`` is package data (pyproject.toml): an installed wheel has it beside
``cache/``, as the source tree does, so :data:`LUA_DIR` is the same path in both.

On a Redis Cluster every script's KEYS share one hash slot (the README's key
table), and redis-py refuses scripts in a cluster pipeline; :func:`run_each`
pipelines them anyway (:func:`queue`), one EVALSHA per call routed by its keys
(a batch is one round trip per node), and re-runs through ``Script`` what a node
did not know (:func:`pipeline_reply`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"
SCRIPTS_ATTRIBUTE = "_hmdp_scripts"


@cache
def lua_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` (read once per process)."""
    path = LUA_DIR / f"{name}.lua"
    if not path.is_file():
        raise FileNotFoundError(f"no Lua script {name!r} in {LUA_DIR}")
    return path.read_text()


def _registered(client: redis.Redis, key: object, source: Callable[[], str]) -> Script:
    """``client``'s script under ``key``, registered on first use (thread-safe: setdefault)."""
    scripts = client.__dict__.get(SCRIPTS_ATTRIBUTE)
    if scripts is None:
        scripts = client.__dict__.setdefault(SCRIPTS_ATTRIBUTE, {})
    script = scripts.get(key)
    if script is None:
        script = scripts.setdefault(key, client.register_script(source()))
    return script


def load_script(client: redis.Redis, name: str) -> Script:
    """A callable script bound to ``client``: ``script(keys=[...], args=[...])``."""
    return _registered(client, name, lambda: lua_source(name))


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
    return _registered(client, (name, parts), lambda: composed_source(name, parts))


def call(script: Script, keys: list, args: list) -> Any:
    """``script(keys=keys, args=args)`` on its client, for a hot path: one EVALSHA, less CPU.

    redis-py's client layer around a command (its retry wrapper, argument
    filters, observability hooks, the lookup of a reply callback EVALSHA does
    not have) costs a quarter of a script call's client CPU; this sends the
    EVALSHA on a connection of the client's own pool instead (:func:`run_on`).
    A cluster client (no one pool) goes through ``Script``.
    """
    pool = getattr(script.registered_client, "connection_pool", None)
    if pool is None:
        return script(keys=keys, args=args)
    return run_on(pool, script, keys, args)


Then = Callable[[Any, Any], Any]  # (connection, the script's reply) -> the answer


def run_on(
    pool: redis.ConnectionPool, script: Script, keys: list, args: list, then: Then | None = None
) -> Any:
    """``script`` on one connection of ``pool``; ``then(connection, reply)`` on the same one.

    ``then`` sends what must follow the script on its connection (``WAIT``
    counts the writes of its own connection: cache/replication.py); its return
    is the answer. The pool's checkout (the stall breaker, cache/connection.py),
    the connection's timeouts and its reply parsing are the pool's. As redis-py
    does, a connection whose command failed other than by an error reply is
    disconnected before it goes back to the pool. A Redis that does not know the
    script (restarted, flushed, a new master: NOSCRIPT) gets its text by EVAL on
    the same connection, which caches it there again.
    """
    connection = pool.get_connection()
    try:
        try:
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            reply = connection.read_response()
        except redis.exceptions.NoScriptError:
            connection.send_command("EVAL", script.script, len(keys), *keys, *args)
            reply = connection.read_response()
        return reply if then is None else then(connection, reply)
    except redis.ResponseError:
        raise
    except BaseException:
        connection.disconnect()
        raise
    finally:
        if connection.should_reconnect():
            connection.disconnect()
        pool.release(connection)


def queue(pipe: Any, script: Script, keys: list, args: list) -> None:
    """Queue ``script`` on ``pipe`` as a bare EVALSHA: a cluster pipeline takes no ``Script``.

    Its reply goes through :func:`pipeline_reply`, which answers a NOSCRIPT.
    """
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def pipeline_reply(script: Script, keys: list, args: list, reply: Any) -> Any:
    """The reply of a :func:`queue`-d call; a server new to the script runs it again through it.

    ``Script`` loads the script where it was missing (a restarted Redis, a node
    new to the script). An error reply is handed back, not raised: the caller
    decides whether the other replies of its pipeline count first.
    """
    if isinstance(reply, redis.exceptions.NoScriptError):
        return script(keys=keys, args=args)
    return reply


def run_each(
    client: redis.Redis | RedisCluster, script: Script, calls: list[tuple[list, list]]
) -> list:
    """Run ``script`` once per (keys, args), all in one pipeline; the replies in order.

    An error reply is raised (the first one), after every call was sent.
    """
    pipe = client.pipeline(transaction=False)
    if not isinstance(client, RedisCluster):
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return pipe.execute()
    for keys, args in calls:
        queue(pipe, script, keys, args)
    replies = [
        pipeline_reply(script, keys, args, reply)
        for (keys, args), reply in zip(calls, pipe.execute(raise_on_error=False), strict=True)
    ]
    error = next((reply for reply in replies if isinstance(reply, Exception)), None)
    if error is not None:
        raise error
    return replies
