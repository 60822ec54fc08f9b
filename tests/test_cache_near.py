"""cache/near.py: the in-process L1 and its cross-process invalidation, for real.

The acceptance test runs reader processes with L1 on, hammering one shop while
this process updates it through the real PUT /shop route; no read that started
after an update returned may see an older version.
"""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest
import redis
from support.redis_faults import all_keys, kill_clients
from support.shops import CountingLoader, add_shops, make_region

from cache.near import NearCache
from cache.scripts import load_script
from cache.shops import shop_near_cache, shop_region
from metrics import CACHE_INVALIDATIONS, CACHE_REQUESTS
from services import Services
from settings import Settings

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


def near_for(services: Services, ttl: float = 5.0, size: int = 100) -> NearCache:
    return NearCache(
        services.redis,
        channel="cache:{shop}:invalidate",
        members_key="cache:{shop}:near:members",
        size=size,
        ttl=ttl,
    )


def started(near: NearCache) -> NearCache:
    near.start()
    assert near.subscribed.wait(10), "listener never subscribed"
    assert near.serving()
    return near


def counter(metric, **labels) -> float:  # type: ignore[no-untyped-def]
    return metric.labels(**labels)._value.get()


# --- the L1 itself ---------------------------------------------------------------------
def test_not_serving_until_the_listener_is_subscribed(services):
    near = near_for(services)
    assert not near.serving()
    assert near.put("1", "x", near.generation, time.monotonic()) is False
    assert near.get("1") is None  # and this starts the listener
    assert near.subscribed.wait(10)
    assert near.put("1", "x", near.generation, time.monotonic())
    assert near.get("1") == "x"
    near.stop()
    assert near.get("1") is None or not near.serving()


def test_insert_racing_an_invalidation_is_refused(services):
    near = started(near_for(services))
    try:
        generation = near.generation  # a reader snapshots, then reads Redis (old value) ...
        near.evict(["1"])  # ... the invalidation lands ...
        assert near.put("1", "old", generation, time.monotonic()) is False  # ... refused
        assert near.get("1") is None
        assert near.put("1", "new", near.generation, time.monotonic())
    finally:
        near.stop()


def test_entry_expiry_counts_from_before_the_redis_read(services):
    near = started(near_for(services, ttl=0.5))
    try:
        # read long ago (e.g. a descheduled thread): already past its TTL at insertion
        assert near.put("1", "x", near.generation, time.monotonic() - 1.0)
        assert near.get("1") is None
    finally:
        near.stop()


def test_size_is_bounded(services):
    near = started(near_for(services, size=3))
    try:
        for i in range(10):
            near.put(str(i), "x", near.generation, time.monotonic())
        assert len(near) == 3 and near.get("9") == "x"
    finally:
        near.stop()


def aged(near: NearCache, key: str, text: str, fraction: float) -> None:
    """Insert ``text`` as if read from Redis ``fraction`` of the TTL ago."""
    assert near.put(key, text, near.generation, time.monotonic() - fraction * near.ttl)


def test_an_entry_is_due_for_its_refresh_once_and_only_late_in_its_ttl(services):
    near = started(near_for(services, ttl=60.0))
    try:
        near.put("1", "young", near.generation, time.monotonic())
        assert near.lookup("1") == ("young", False)  # before REFRESH_AHEAD[0] of the TTL
        aged(near, "2", "old", 0.9)  # past the last refresh point, not expired
        assert near.lookup("2") == ("old", True)  # handed to this reader ...
        assert near.lookup("2") == ("old", False)  # ... and to no other
        assert near.get("2") == "old"  # still served meanwhile
        aged(near, "3", "gone", 1.5)
        assert near.lookup("3") == (None, False)  # expired: nothing to refresh
        assert near.lookup("4") == (None, False)
    finally:
        near.stop()


def test_a_due_entry_evicted_before_its_claim_is_not_handed_out(services):
    near = started(near_for(services, ttl=60.0))
    try:
        aged(near, "1", "old", 0.9)
        near.evict(["1"])
        assert near.lookup("1") == (None, False)
    finally:
        near.stop()


@pytest.fixture
def due_entry(services):  # type: ignore[no-untyped-def]
    """A region with a near-cache whose entry of shop 1 is due for its refresh-ahead."""
    add_shops(services.db, 1)
    near = started(near_for(services, ttl=60.0))
    try:
        loader = CountingLoader(services.db)
        region = make_region(services, loader)
        region.near = near
        first = region.get(1)
        aged(near, "1", first, 0.9)
        yield region, near, loader, first
    finally:
        near.stop()


def test_a_due_hit_refreshes_the_entry_from_redis_once(services, due_entry):
    region, near, loader, first = due_entry
    # Redis now holds another text (as a rebuild would write): the due reader
    # is served the entry it found, and re-reads Redis for the next readers.
    changed = first.replace('"name":"shop1"', '"name":"refreshed"')
    services.redis.set(region.physical_key("1"), changed)
    hits = counter(CACHE_REQUESTS, strategy="mutex", result="hit")
    assert region.near_get("1") == first
    assert counter(CACHE_REQUESTS, strategy="mutex", result="hit") == hits + 1
    assert near.lookup("1") == (changed, False)  # a new entry, with a new TTL
    assert region.near_get("1") == changed
    assert counter(CACHE_REQUESTS, strategy="mutex", result="hit") == hits + 1  # no re-read
    assert loader.calls == 1  # never the database


def test_a_due_refresh_never_rebuilds_and_leaves_the_entry_to_its_ttl(services, due_entry):
    region, near, loader, first = due_entry
    services.redis.delete(region.physical_key("1"))  # expired in Redis, say
    assert region.near_get("1") == first
    assert loader.calls == 1  # no rebuild from a refresh
    assert near.lookup("1") == (first, False)  # kept, claimed: expires at its TTL


def test_a_due_refresh_that_cannot_reach_redis_still_serves_the_hit(due_entry):
    region, near, _, first = due_entry
    # the region's own client now points at a port nobody listens on
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    region._get = load_script(dead, "cache_get")
    assert region.near_get("1") == first
    assert near.lookup("1") == (first, False)


def test_lost_subscription_clears_and_stops_serving_then_recovers(services):
    near = started(near_for(services))
    try:
        near.put("1", "x", near.generation, time.monotonic())
        generation = near.generation
        kill_clients(services.redis, _type="pubsub")
        deadline = time.monotonic() + 10
        while near.generation == generation and time.monotonic() < deadline:
            time.sleep(0.01)
        assert near.generation != generation  # the listener noticed and cleared
        assert near.subscribed.wait(10) and near.serving()  # and came back
        assert near.get("1") is None
    finally:
        near.stop()


# --- invalidation with acknowledgements ---------------------------------------------------
def test_update_evicts_every_listener_and_waits_for_their_acks(services):
    add_shops(services.db, 1)
    readers = [started(near_for(services)) for _ in range(3)]
    try:
        for near in readers:
            assert near.put("1", "old", near.generation, time.monotonic())
        region = make_region(services, CountingLoader(services.db), near_cache_ttl=5.0)
        acked = counter(CACHE_INVALIDATIONS, outcome="acked")
        region.invalidate(1)  # returns only after all three evicted
        assert all(near.get("1") is None for near in readers)
        assert counter(CACHE_INVALIDATIONS, outcome="acked") == acked + 1
        assert not all_keys(services.redis, "cache:{shop}:near:ack:*")
    finally:
        for near in readers:
            near.stop()


def test_a_registered_member_that_does_not_ack_makes_the_writer_wait_out_the_ttl(services):
    add_shops(services.db, 1)
    # a process whose subscription silently dropped: registered, but receives nothing
    services.redis.zadd("cache:{shop}:near:members", {"ghost": time.time() * 1000})
    region = make_region(services, CountingLoader(services.db), near_cache_ttl=0.3)
    waited = counter(CACHE_INVALIDATIONS, outcome="waited_ttl")
    region.invalidate(1)
    assert counter(CACHE_INVALIDATIONS, outcome="waited_ttl") == waited + 1


def test_region_serves_from_l1_without_redis_and_evicts_on_update(services):
    add_shops(services.db, 1)
    near = started(near_for(services))
    try:
        region = make_region(services, CountingLoader(services.db))
        region.near = near
        first = region.get(1)
        services.redis.delete(region.physical_key("1"))  # Redis no longer has it ...
        hits = counter(CACHE_REQUESTS, strategy="mutex", result="near_hit")
        assert region.get(1) == first  # ... L1 answered
        assert counter(CACHE_REQUESTS, strategy="mutex", result="near_hit") == hits + 1
        with services.db.session() as session:
            from models.entities import Shop

            session.get(Shop, 1).name = "renamed"
        region.invalidate(1)
        assert '"name":"renamed"' in region.get(1)
    finally:
        near.stop()


# --- the acceptance test: reader processes vs. updates --------------------------------
def _hammer(settings: Settings, shop_id: int, ready, stop, out) -> None:  # type: ignore[no-untyped-def]
    """Child process: read one shop in a loop with L1 on; log (start time, version)."""
    services = Services(settings)
    near = shop_near_cache(services.redis, settings)
    region = shop_region(services.redis, services.db, settings, near=near)
    region.get(shop_id)
    assert near is not None and near.subscribed.wait(10)
    while region.get(shop_id) is None or not near.serving():
        time.sleep(0.01)
    ready.set()
    starts: list[float] = []
    versions: list[int] = []
    while not stop.is_set():
        begun = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
        name = json.loads(region.get(shop_id))["name"]
        starts.append(begun)
        versions.append(int(name[1:]) if name.startswith("v") else 0)
    hits = CACHE_REQUESTS.labels(strategy=settings.shop_cache_strategy, result="near_hit")
    out.put((starts, versions, hits._value.get()))
    near.stop()
    services.close()


@pytest.mark.process
@pytest.mark.slow
def test_no_process_returns_the_old_value_after_an_update_returns(settings, login_as):
    from web import create_app

    # A long L1 TTL: without the acked invalidation, stale reads would last 5 s.
    settings = settings.with_(near_cache_ttl=5.0)
    app = create_app(settings)
    services = app.extensions["hmdp"]
    add_shops(services.db, 1)
    admin = login_as(1, role="admin")
    client = app.test_client()
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    procs = [ctx.Process(target=_hammer, args=(settings, 1, ready, stop, out)) for ready in readies]
    for p in procs:
        p.start()
    returned: list[tuple[float, int]] = []
    try:
        assert all(ready.wait(60) for ready in readies), "readers never got ready"
        acked = counter(CACHE_INVALIDATIONS, outcome="acked")
        for version in range(1, 21):
            response = client.put("/shop", json={"id": 1, "name": f"v{version}"}, headers=admin)
            assert response.status_code == 200, response.json
            returned.append((time.monotonic(), version))
            time.sleep(0.03)
        time.sleep(0.2)
    finally:
        stop.set()
        reports = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    for starts, versions, near_hits in reports:
        assert near_hits > 100, "L1 was not exercised"
        assert len(starts) > 1000
        assert max(versions) == 20
        violations = []
        floor_index = 0
        floor = 0
        for begun, seen in zip(starts, versions, strict=True):
            while floor_index < len(returned) and returned[floor_index][0] < begun:
                floor = returned[floor_index][1]
                floor_index += 1
            if seen < floor:
                violations.append((begun, seen, floor))
        assert not violations, f"stale reads after the update returned: {violations[:5]}"
    # every update was confirmed by both readers' listeners (none fell back to the TTL)
    assert counter(CACHE_INVALIDATIONS, outcome="acked") == acked + 20
    app.extensions["hmdp"].close()


def test_listener_thread_ends_when_its_cache_is_dropped(services):
    near = started(near_for(services))
    thread = near._listener
    assert thread is not None and thread.is_alive()
    del near
    import gc

    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.process
def test_fork_child_starts_with_an_empty_non_serving_l1(services):
    near = started(near_for(services))
    near.put("1", "x", near.generation, time.monotonic())
    result = multiprocessing.get_context("fork").Queue()

    def child() -> None:
        result.put((near.serving(), len(near), near._listener is None))

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert result.get(timeout=10) == (False, 0, True)
    near.stop()
