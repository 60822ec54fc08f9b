"""The Lua scripts (cache/scripts.py): each compiles on a real Redis, each client registers once,
and an installed wheel has them."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from support.backends import redis_for
from support.env import ROOT

from cache.connection import connect
from cache.scripts import LUA_DIR, call, load_composed, load_script, lua_source

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

NAMES = sorted(path.stem for path in LUA_DIR.glob("*.lua"))


def test_every_script_compiles_on_redis(redis_client):
    assert len(NAMES) > 10
    for name in NAMES:
        sha = redis_client.script_load(lua_source(name))
        assert redis_client.script_exists(sha) == [True], name


@pytest.mark.redis_cluster(single="clients of one server's URL")
def test_a_client_registers_each_script_once(settings):
    first = redis.Redis.from_url(settings.redis_url)
    second = redis.Redis.from_url(settings.redis_url)
    try:
        unlock = load_script(first, "unlock")
        assert load_script(first, "unlock") is unlock
        assert unlock.registered_client is first
        other = load_script(second, "unlock")
        assert other is not unlock and other.registered_client is second
        parts = ("session_user", "token_bucket", "seckill")
        charged = load_composed(first, "seckill_charged", parts)
        assert load_composed(first, "seckill_charged", parts) is charged
        assert load_composed(second, "seckill_charged", parts) is not charged
        assert charged.registered_client is first
    finally:
        first.close()
        second.close()


@pytest.mark.redis_cluster(single="clients of one server's URL")
def test_the_scripts_go_with_their_client(settings):
    client = redis.Redis.from_url(settings.redis_url)
    load_script(client, "unlock")
    gone = weakref.ref(client)
    client.close()
    del client
    gc.collect()
    assert gone() is None


# What a wheel of the tree is built from: the sources, not the checkout's own state.
NOT_SOURCES = (".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".*_cache", "results")

LOAD_EVERY_SCRIPT = """
import sys
from pathlib import Path
import redis
import cache.scripts as scripts
target, url = Path(sys.argv[1]), sys.argv[2]
assert Path(scripts.__file__).is_relative_to(target), scripts.__file__
assert scripts.LUA_DIR.is_relative_to(target), scripts.LUA_DIR
client = redis.Redis.from_url(url)
names = sorted(path.stem for path in scripts.LUA_DIR.glob("*.lua"))
for name in names:
    assert client.script_exists(client.script_load(scripts.lua_source(name))) == [True], name
print(" ".join(names))
"""


@pytest.mark.process
def test_an_installed_wheel_loads_every_script(redis_servers, tmp_root: Path, tmp_path: Path):
    """lua/ is package data: a wheel installed outside the repo loads every script from itself.

    Once, on the sqlite backend's Redis (SCRIPT LOAD touches no key): the wheel does not
    depend on the backend.
    """
    server = redis_for("sqlite", redis_servers, tmp_root)
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel_dir, target = tmp_path / "wheel", tmp_path / "installed"
    build = [*pip, "wheel", str(source), "-w", str(wheel_dir), "--no-deps", "--no-build-isolation"]
    subprocess.run(build, check=True, cwd=tmp_path)
    (wheel,) = wheel_dir.glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    shutil.rmtree(source)  # nothing of the tree left to load from
    run = [sys.executable, "-c", LOAD_EVERY_SCRIPT, str(target), server.url]
    loaded = subprocess.run(
        run,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert loaded.stdout.split() == NAMES


def test_call_answers_as_the_script_does_and_reloads_a_flushed_one(redis_client):
    script = load_script(redis_client, "unlock")
    redis_client.set("lock:call", "me")
    assert call(script, ["lock:call"], ["someone else", "unlock:call"]) == script(
        keys=["lock:call"], args=["someone else", "unlock:call"]
    )
    redis_client.script_flush()  # as after a restart: the server knows no script
    assert call(script, ["lock:call"], ["me", "unlock:call"]) == 1
    assert not redis_client.exists("lock:call")
    assert redis_client.script_exists(script.sha) == [True]


@pytest.mark.redis_cluster(single="one server's connection pool")
def test_call_hands_a_failed_connection_back_disconnected(settings):
    client = connect(settings.redis_url, replace(settings, redis_socket_timeout=0.2))
    admin = redis.Redis.from_url(settings.redis_url)
    try:
        script = load_script(client, "unlock")
        assert call(script, ["lock:x"], ["me"]) == 0
        pool = client.connection_pool
        connection = pool.get_connection()
        pool.release(connection)  # the pool is LIFO: the next call takes this connection
        with pytest.raises(redis.ResponseError):  # an error reply (no key): still connected
            call(script, [], [])
        assert connection._sock is not None
        admin.client_pause(5_000, all=True)  # no reply within the socket timeout
        try:
            with pytest.raises(redis.TimeoutError):
                call(script, ["lock:x"], ["me"])
        finally:
            admin.client_unpause()
        assert connection._sock is None  # never handed out again with a reply unread
    finally:
        client.close()
        admin.close()
