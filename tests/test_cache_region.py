"""cache/region.py against a real Redis and a real database (both backends).

Loads are counted by wrapping our own DB loader (cache.shop_source.load_shop),
never by mocking the database. Concurrency is real threads (and processes);
waits are bounded by generous deadlines, never asserted as speeds.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from datetime import UTC

import pytest
from support.shops import CountingLoader, add_shops, make_region, rename_shop

from cache.jitter import jittered
from cache.region import (
    CacheRegion,
    RebuildTimeout,
    decode_logical,
    encode_logical,
    to_json,
)
from cache.shop_source import load_shop, load_shops
from services import Services
from settings import Settings

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


# --- helpers -------------------------------------------------------------------------
def run_threads(count: int, target: Callable[[int], object]) -> list[object]:
    """Start ``count`` threads behind one barrier; return each one's result or exception."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # recorded, asserted by the caller
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a reader thread hung"
    return results


# --- pure helpers ------------------------------------------------------------------------
def test_logical_envelope_round_trip_without_parsing():
    data = to_json({"id": 7, "name": '店,"x"', "nested": {"expireTime": 1}})
    text = encode_logical(data, 1234.5)
    assert text.startswith('{"expireTime":1234.500,"data":')
    assert decode_logical(text) == (1234.5, data)
    # a foreign writer's field order still decodes (slow path)
    assert decode_logical('{"data":{"id":1},"expireTime":9}') == (9.0, '{"id":1}')


def test_jitter_spreads_ttls_within_bounds():
    values = {jittered(1800, 0.1) for _ in range(200)}
    assert all(1_800_000 <= v <= 1_980_000 for v in values)
    assert len(values) > 50  # spread, not one value
    assert jittered(120, 0.0) == 120_000


# --- mutex (cache breakdown) ----------------------------------------------------------------
@pytest.mark.parametrize("state", ["missing", "expired"])
def test_mutex_200_concurrent_readers_one_database_load(services, state):
    add_shops(services.db, 3)
    loader = CountingLoader(services.db)
    region = make_region(services, loader, shop_cache_strategy="mutex")
    if state == "expired":
        services.redis.set(region.physical_key("2"), to_json({"id": 2, "name": "old"}), px=1)
        time.sleep(0.01)
        assert services.redis.get(region.physical_key("2")) is None
    results = run_threads(200, lambda _: region.get(2))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert loader.calls == 1
    assert {r for r in results} == {to_json(load_shop(services.db, 2, UTC))}
    assert services.redis.pttl(region.physical_key("2")) > 0


def _process_reader(settings: Settings, shop_id: int, threads: int, out) -> None:  # type: ignore[no-untyped-def]
    """Child process: ``threads`` readers of one key; reports loads and answers."""
    services = Services(settings)
    loader = CountingLoader(services.db)
    region = make_region(services, loader)
    barrier_results = run_threads(threads, lambda _: region.get(shop_id))
    out.put((loader.calls, sorted({str(r) for r in barrier_results})))
    services.close()


@pytest.mark.process
def test_mutex_readers_in_several_processes_one_database_load(services, settings):
    add_shops(services.db, 3)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_reader, args=(settings, 3, 50, out)) for _ in range(3)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(calls for calls, _ in reports) == 1
    expected = to_json(load_shop(services.db, 3, UTC))
    assert all(answers == [expected] for _, answers in reports)


def test_mutex_waiters_give_up_with_rebuild_timeout_and_one_load(services):
    add_shops(services.db, 1)
    gate = threading.Event()
    loader = CountingLoader(services.db, gate)
    region = make_region(services, loader, rebuild_wait=0.3)
    holder: list[object] = []
    rebuilder = threading.Thread(target=lambda: holder.append(region.get(1)))
    rebuilder.start()
    assert loader.started.wait(10)
    results = run_threads(20, lambda _: region.get(1))
    assert all(isinstance(r, RebuildTimeout) for r in results)
    gate.set()
    rebuilder.join(10)
    assert holder == [to_json(load_shop(services.db, 1, UTC))]
    assert loader.calls == 1
    assert region.get(1) == holder[0]  # now cached


def test_failed_rebuild_is_taken_over_by_one_waiter(services):
    add_shops(services.db, 1)
    calls = {"n": 0}

    def flaky(key: str) -> dict | None:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.05)  # let the others queue up behind the lock
            raise RuntimeError("database hiccup")
        return load_shop(services.db, key, UTC)

    region = make_region(services, flaky)
    results = run_threads(30, lambda _: region.get(1))
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1 and "hiccup" in str(failures[0])
    assert calls["n"] == 2  # the failed one, then exactly one waiter took over
    assert {r for r in results if not isinstance(r, Exception)} == {
        to_json(load_shop(services.db, 1, UTC))
    }


# --- pass-through + null caching ----------------------------------------------------------
def test_passthrough_caches_a_database_miss_as_null_marker(services):
    loader = CountingLoader(services.db)
    region = make_region(services, loader, bloom=False, shop_cache_strategy="passthrough")
    assert region.get(42) is None
    assert region.get(42) is None
    assert loader.calls == 1
    key = region.physical_key("42")
    assert services.redis.get(key) == ""
    ttl = services.redis.pttl(key)
    settings = services.settings
    assert 0 < ttl <= settings.null_ttl * 1000 * (1 + settings.ttl_jitter)


def test_passthrough_hit_costs_no_load_and_value_ttl_is_jittered(services):
    add_shops(services.db, 1)
    loader = CountingLoader(services.db)
    region = make_region(services, loader, shop_cache_strategy="passthrough")
    first = region.get(1)
    assert first == to_json(load_shop(services.db, 1, UTC)) and region.get(1) == first
    assert loader.calls == 1
    ttl = services.redis.pttl(region.physical_key("1"))
    s = services.settings
    assert s.shop_ttl * 1000 - 5000 < ttl <= s.shop_ttl * 1000 * (1 + s.ttl_jitter)


# --- version compare-and-set: a slow rebuild never writes back an old value --------------
def test_rebuild_racing_an_update_does_not_store_the_old_value(services):
    add_shops(services.db, 1)
    old = load_shop(services.db, 1, UTC)
    loaded, gate = threading.Event(), threading.Event()

    def slow_loader(key: str) -> dict | None:
        data = load_shop(services.db, key, UTC)  # reads the OLD row ...
        loaded.set()
        assert gate.wait(30)  # ... and is slow to store it
        return data

    region = make_region(services, slow_loader)
    seen: list[object] = []
    reader = threading.Thread(target=lambda: seen.append(region.get(1)))
    reader.start()
    assert loaded.wait(10)
    rename_shop(services.db, 1, "renamed")  # the update: database first ...
    region.invalidate(1)  # ... then the cache
    gate.set()
    reader.join(10)
    assert seen == [to_json(old)]  # that read started before the update returned
    assert services.redis.get(region.physical_key("1")) is None  # old value not stored
    region.loader = CountingLoader(services.db)
    assert '"name":"renamed"' in region.get(1)


# --- logical expiry ---------------------------------------------------------------------------
def test_logical_expired_value_served_while_exactly_one_refresh_runs(services):
    add_shops(services.db, 2)
    region = make_region(services, CountingLoader(services.db), shop_cache_strategy="logical")
    old_text = to_json({"id": 2, "name": "stale"})
    services.redis.set(region.logical_key("2"), encode_logical(old_text, time.time() - 5))
    gate = threading.Event()
    refresh_loader = CountingLoader(services.db, gate)
    scheduled: list[str] = []
    refreshers: list[threading.Thread] = []

    def refresher(key: str) -> None:  # what the Celery task does, in a thread
        scheduled.append(key)
        t = threading.Thread(
            target=lambda: CacheRegion(
                services.redis, refresh_loader, region.config, bloom=region.bloom
            ).refresh(key)
        )
        refreshers.append(t)
        t.start()

    region.refresher = refresher
    results = run_threads(100, lambda _: region.get(2))
    # every reader returned (the refresh is still blocked on the gate): nobody waited
    assert refresh_loader.started.wait(10)
    assert not gate.is_set()
    assert results == [old_text] * 100
    assert scheduled == ["2"] and refresh_loader.calls == 1
    gate.set()
    for t in refreshers:
        t.join(10)
    fresh = to_json(load_shop(services.db, 2, UTC))
    assert region.get(2) == fresh
    expire_at, _ = decode_logical(services.redis.get(region.logical_key("2")))
    assert expire_at > time.time() + services.settings.logical_ttl - 60
    assert services.redis.ttl(region.logical_key("2")) == -1  # no physical TTL


def test_logical_missing_key_loads_once_and_stores_logically(services):
    add_shops(services.db, 1)
    loader = CountingLoader(services.db)
    region = make_region(services, loader, shop_cache_strategy="logical")
    results = run_threads(50, lambda _: region.get(1))
    assert loader.calls == 1
    assert set(results) == {to_json(load_shop(services.db, 1, UTC))}
    assert services.redis.ttl(region.logical_key("1")) == -1


def test_refresh_of_hot_set_leaves_no_orphan_logical_keys(services):
    add_shops(services.db, 5)
    region = make_region(services, CountingLoader(services.db))  # strategy mutex
    region.make_hot(["1", "2", "3"])
    assert region.refresh_many(["1", "2", "3"], lambda ks: load_shops(services.db, ks, UTC)) == 3
    assert services.redis.exists(*(region.logical_key(k) for k in "123")) == 3
    dropped = region.make_hot(["2", "3", "4"])
    assert dropped == ["1"] and not services.redis.exists(region.logical_key("1"))
    # a late refresh of a shop that left the hot set writes nothing
    assert region.refresh("1") is False
    assert not services.redis.exists(region.logical_key("1"))


# --- invalidation -------------------------------------------------------------------------
def test_invalidate_removes_both_keys_and_reports_hot(services):
    add_shops(services.db, 1)
    region = make_region(services, CountingLoader(services.db))
    region.make_hot(["1"])
    region.refresh("1")
    services.redis.set(region.physical_key("1"), "x")
    assert region.invalidate(1).logical is True
    assert not services.redis.exists(region.logical_key("1"), region.physical_key("1"))
    assert region.invalidate(1).logical is False


def test_strategy_names_are_validated():
    from cache.region import RegionConfig

    with pytest.raises(ValueError):
        RegionConfig(name="shop", prefix="cache:shop", strategy="lru")
