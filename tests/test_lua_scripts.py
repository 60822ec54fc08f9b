"""The Lua scripts (cache/scripts.py): each compiles on a real Redis, each client registers once."""

from __future__ import annotations

import gc
import weakref

import redis

from cache.scripts import LUA_DIR, load_composed, load_script, lua_source

NAMES = sorted(path.stem for path in LUA_DIR.glob("*.lua"))


def test_every_script_compiles_on_redis(redis_client):
    assert len(NAMES) > 10
    for name in NAMES:
        sha = redis_client.script_load(lua_source(name))
        assert redis_client.script_exists(sha) == [True], name


def test_a_client_registers_each_script_once(settings):
    first = redis.Redis.from_url(settings.redis_url)
    second = redis.Redis.from_url(settings.redis_url)
    try:
        unlock = load_script(first, "unlock")
        assert load_script(first, "unlock") is unlock
        assert unlock.registered_client is first
        other = load_script(second, "unlock")
        assert other is not unlock and other.registered_client is second
        parts = ("token_bucket", "seckill")
        charged = load_composed(first, "seckill_charged", parts)
        assert load_composed(first, "seckill_charged", parts) is charged
        assert load_composed(second, "seckill_charged", parts) is not charged
        assert charged.registered_client is first
    finally:
        first.close()
        second.close()


def test_the_scripts_go_with_their_client(settings):
    client = redis.Redis.from_url(settings.redis_url)
    load_script(client, "unlock")
    gone = weakref.ref(client)
    client.close()
    del client
    gc.collect()
    assert gone() is None
