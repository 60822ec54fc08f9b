"""PUT and POST /shop after their commit: never a 503; every cache and the GEO index converge.

The fault is real: from the moment the shop's row commits (an SQLAlchemy commit
event) the test's own redis-server is paused (``CLIENT PAUSE``) for longer than the
socket timeout, so the write's invalidation times out and the server drops it, and
the steps after it fail on the pool's breaker, as with a stalled Redis. Two reader
"processes" (each its own Redis pool and near-cache listener) and the writing app
hold the old shop in their near-caches. Then either the converge task (a real
Celery worker, broker on another redis-server) or beat's sweep must bring the
cached shop, every near-cache and the GEO index to the new row (cache/shop_sync.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import event
from support.redis_server import own_redis
from support.seckill import wait_for
from support.sessions import session_for
from support.shops import add_shops
from support.workers import celery_worker, log_tail

from cache import geo
from cache.near import NearCache
from cache.region import CacheRegion
from cache.shop_sync import SWEEP_MARK_KEY, converge_shop, converge_updated
from cache.shops import SHOP_PREFIX, shop_bloom, shop_near_cache, shop_region
from metrics import CACHE_INVALIDATIONS
from services import Services
from settings import Settings

SOCKET_TIMEOUT = 0.5
# Longer than the invalidation's socket timeout plus the breaker's fail-fast second
# (cache/connection.py), so every step of the request fails while Redis is paused.
PAUSE_MS = 2500
NEW = {"id": 1, "name": "renamed", "typeId": 2, "x": 121.5, "y": 31.25}
# POST /shop's shop: the next id after _build's shops 1 and 2.
CREATED = {"name": "created", "typeId": 2, "x": 121.5, "y": 31.25}
CREATED_ID = 3
CREATED_PHYSICAL = f"{SHOP_PREFIX}:{CREATED_ID}"
PHYSICAL, LOGICAL, VERSION = (
    f"{SHOP_PREFIX}:1",
    f"{SHOP_PREFIX}:logical:1",
    f"{SHOP_PREFIX}:ver:1",
)


@dataclass
class Reader:
    """Another web process's view: its own Redis pool, near-cache and listener."""

    services: Services
    near: NearCache
    region: CacheRegion

    @classmethod
    def start(cls, settings: Settings) -> Reader:
        services = Services(settings)
        near = shop_near_cache(services.redis, settings)
        assert near is not None
        return cls(services, near, shop_region(services.redis, services.db, settings, near=near))

    def fill(self) -> str:
        """Read shop 1 until the near-cache holds it; returns what it holds."""

        def held() -> str | None:
            self.region.get(1)
            return self.near.get("1")

        return wait_for(held, 30, what="the near-cache to hold shop 1")  # type: ignore[return-value]

    def close(self) -> None:
        self.near.stop()
        self.services.close()


def _name(text: str | None) -> str | None:
    return None if text is None else json.loads(text)["name"]


def _build(settings: Settings, tmp_path: Path, **changes: object):  # type: ignore[no-untyped-def]
    """The writing app with two hot shops (types 1 and 2) indexed, and an admin session."""
    from web import create_app
    from web.nearby import load_all
    from web.shops import warm

    local = settings.with_(
        redis_socket_timeout=SOCKET_TIMEOUT,
        redis_connect_timeout=SOCKET_TIMEOUT,
        near_cache_ttl=5.0,
        **changes,
    )
    app = create_app(local)
    svc: Services = app.extensions["hmdp"]
    add_shops(svc.db, 1)
    add_shops(svc.db, 1, start=2, type_id=2)
    assert warm(svc)["hot"] == 2  # both hot: each has a logical key to rewrite
    load_all(svc)
    return local, app, svc, session_for(svc, 1, "admin")


def _writer_near(app, client) -> NearCache:  # type: ignore[no-untyped-def]
    from web.shop_cache import shop_region_holder

    def held() -> str | None:
        client.get("/shop/1")
        region = shop_region_holder(app).region
        return region is not None and region.near is not None and region.near.get("1")

    wait_for(held, 30, what="the writer's near-cache to hold shop 1")
    return shop_region_holder(app).region.near


def _put_into_a_pause(app, svc: Services, client, admin: dict) -> object:  # type: ignore[no-untyped-def]
    """PUT /shop with the server paused from the row's COMMIT on; returns the response."""
    return _write_into_a_pause(svc, lambda: client.put("/shop", json=NEW, headers=admin))


def _write_into_a_pause(svc: Services, write: Callable[[], object]) -> object:
    """``write()`` with the server paused from the row's COMMIT on; returns its response."""
    pauser = redis.Redis.from_url(svc.redis_url)
    paused: list[bool] = []

    def pause(_conn) -> None:  # type: ignore[no-untyped-def]
        if not paused:
            paused.append(pauser.client_pause(PAUSE_MS))

    event.listen(svc.db.engine, "commit", pause)
    try:
        response = write()
    finally:
        event.remove(svc.db.engine, "commit", pause)
    assert paused, "the write never committed"
    wait_for(lambda: _answers(svc.redis_url), 30, what="the pause to end")
    pauser.close()
    return response


def _answers(url: str) -> bool:
    probe = redis.Redis.from_url(url, socket_timeout=0.2)
    try:
        return bool(probe.ping())
    except redis.RedisError:
        return False
    finally:
        probe.close()


def _geo(client: redis.Redis) -> tuple[object, object]:
    """(position of shop 1 under type 2, its score under type 1)."""
    return client.geopos(geo.geo_key(2), "1")[0], client.zscore(geo.geo_key(1), "1")


def _converged(client: redis.Redis) -> bool:
    logical = client.get(LOGICAL)
    position, old_type = _geo(client)
    return (
        logical is not None
        and '"name":"renamed"' in logical
        and position is not None
        and abs(position[0] - NEW["x"]) < 1e-4
        and abs(position[1] - NEW["y"]) < 1e-4
        and old_type is None
    )


def _created_converged(client: redis.Redis) -> bool:
    """The created shop's null marker is gone and the shop is at its place in the index."""
    position = client.geopos(geo.geo_key(2), str(CREATED_ID))[0]
    return (
        client.get(CREATED_PHYSICAL) != ""
        and position is not None
        and abs(position[0] - CREATED["x"]) < 1e-4
        and abs(position[1] - CREATED["y"]) < 1e-4
    )


@contextlib.contextmanager
def _worker_converges(
    local: Settings, broker_url: str, tmp_path: Path, converged: Callable[[], bool]
) -> Iterator[None]:
    """A real Celery worker (broker at ``broker_url``) running until ``converged()``."""
    env = {"HMDP_REDIS_SOCKET_TIMEOUT": str(SOCKET_TIMEOUT), "CELERY_BROKER_URL": broker_url}
    log = tmp_path / "worker.log"
    with celery_worker(local, log, **env):
        wait_for(converged, 90, what=f"the converge task to finish\n{log_tail(log)}")
        yield


def _assert_everyone_sees_the_new_row(check: redis.Redis, nears: list[NearCache], client) -> None:  # type: ignore[no-untyped-def]
    assert _converged(check)
    assert _name(check.get(PHYSICAL) or None) in (None, "renamed")  # physical copy
    for near in nears:  # evicted by the convergence's broadcast, or already the new row
        assert _name(near.get("1")) in (None, "renamed")
    answer = client.get("/shop/1").json
    assert answer["data"]["name"] == "renamed" and answer["data"]["typeId"] == 2


@pytest.mark.process
def test_a_write_committed_into_a_redis_pause_is_answered_and_its_task_converges(
    settings, tmp_path
):
    with own_redis(tmp_path / "cache") as server, own_redis(tmp_path / "broker") as broker:
        local, app, svc, admin = _build(
            settings, tmp_path, redis_url=server.url, celery_broker_url=broker.url
        )
        readers = [Reader.start(local) for _ in range(2)]
        # The test's own reads: a plain client, not the app's pool (its breaker may be open).
        check = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            client = app.test_client()
            nears = [_writer_near(app, client), *(r.near for r in readers)]
            assert [_name(r.fill()) for r in readers] == ["shop1", "shop1"]
            version = check.get(VERSION)

            response = _put_into_a_pause(app, svc, client, admin)
            assert response.status_code == 202, response.json  # committed, never a 503
            assert response.json["success"] is True
            # The fault bit: the invalidation timed out and the server dropped it.
            assert check.get(VERSION) == version
            assert not _converged(check)
            for reader in readers:  # back on Redis after the pause: they read what it has
                wait_for(reader.near.serving, 30, what="a reader's listener to resubscribe")
                reader.region.get(1)

            with _worker_converges(local, broker.url, tmp_path, lambda: _converged(check)):
                # the task's invalidation came before its hot refresh: all acknowledged
                _assert_everyone_sees_the_new_row(check, nears, client)
            for reader in readers:
                assert _name(reader.region.get(1)) == "renamed"
        finally:
            for reader in readers:
                reader.close()
            check.close()
            svc.close()


@pytest.mark.process
def test_a_create_committed_into_a_redis_pause_is_answered_with_its_id_and_converges(
    settings, tmp_path
):
    """POST /shop: the same pause from the COMMIT on; the new shop's id is a Bloom false
    positive that a lookup cached as a null marker, so until the caches converge the
    committed shop is "not found" and missing from nearby search."""
    with own_redis(tmp_path / "cache") as server, own_redis(tmp_path / "broker") as broker:
        local, app, svc, admin = _build(
            settings, tmp_path, redis_url=server.url, celery_broker_url=broker.url
        )
        reader = Reader.start(local)
        check = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            client = app.test_client()
            shop_bloom(check, local).add(CREATED_ID)  # a false positive: no such row yet
            assert client.get(f"/shop/{CREATED_ID}").status_code == 404
            assert reader.region.get(CREATED_ID) is None
            assert check.get(CREATED_PHYSICAL) == ""  # the null marker both would serve

            response = _write_into_a_pause(
                svc, lambda: client.post("/shop", json=CREATED, headers=admin)
            )
            assert response.status_code == 202, response.json  # committed, never a 503
            assert response.json["success"] is True and response.json["data"] == CREATED_ID
            # The fault bit: the null marker outlived the commit, the index lacks the shop.
            assert check.get(CREATED_PHYSICAL) == ""
            assert not _created_converged(check)
            wait_for(reader.near.serving, 30, what="the reader's listener to resubscribe")
            assert reader.region.get(CREATED_ID) is None  # stale: the committed shop unseen

            with _worker_converges(local, broker.url, tmp_path, lambda: _created_converged(check)):
                answer = client.get(f"/shop/{CREATED_ID}").json
                assert answer["data"]["name"] == "created" and answer["data"]["typeId"] == 2
                assert _name(reader.region.get(CREATED_ID)) == "created"
                near = client.get(
                    "/shop/of/type",
                    query_string={"typeId": 2, "x": CREATED["x"], "y": CREATED["y"]},
                ).json["data"]
                assert [s["id"] for s in near][:1] == [CREATED_ID]  # nearby search finds it
        finally:
            reader.close()
            check.close()
            svc.close()


@pytest.mark.process
def test_a_write_whose_task_could_not_be_sent_converges_by_the_sweep(settings, tmp_path):
    """The broker is the paused Redis itself (the default): the task is lost with it."""
    with own_redis(tmp_path / "cache") as server:
        local, app, svc, admin = _build(settings, tmp_path, redis_url=server.url)
        reader = Reader.start(local)
        beat = Services(local)
        check = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            client = app.test_client()
            nears = [_writer_near(app, client), reader.near]
            assert _name(reader.fill()) == "shop1"
            response = _put_into_a_pause(app, svc, client, admin)
            assert response.status_code == 202, response.json
            assert not _converged(check)
            wait_for(reader.near.serving, 30, what="the reader's listener to resubscribe")
            assert _name(reader.region.get(1)) == "shop1"  # stale: nothing converged it

            # What beat's converge_updated_shops runs, in a process without a near-cache.
            report = converge_updated(shop_region(beat.redis, beat.db, local), beat.db)
            assert report.shops >= 1 and report.unfinished == []
            _assert_everyone_sees_the_new_row(check, nears, client)
            assert _name(reader.region.get(1)) == "renamed"
            assert float(check.get(SWEEP_MARK_KEY)) <= time.time()
        finally:
            reader.close()
            beat.close()
            check.close()
            svc.close()


def test_the_requests_ack_wait_stays_below_the_socket_timeout():
    assert Settings(redis_socket_timeout=2.0, near_cache_ttl=5.0).near_cache_ack_wait == 1.0
    assert Settings(redis_socket_timeout=2.0, near_cache_ttl=0.4).near_cache_ack_wait == 0.4
    assert Settings(redis_socket_timeout=0.5).near_cache_ack_wait == 0.25


def test_a_near_cache_that_does_not_ack_in_time_makes_the_write_202_and_the_task_waits_it_out(
    settings, app_with
):
    app = app_with(redis_socket_timeout=SOCKET_TIMEOUT, near_cache_ttl=1.0)
    svc: Services = app.extensions["hmdp"]
    add_shops(svc.db, 1)
    admin = session_for(svc, 1, "admin")
    # a process whose subscription silently dropped: registered, but never acknowledges
    svc.redis.zadd(f"{SHOP_PREFIX}:near:members", {"ghost": time.time() * 1000})
    unconfirmed = CACHE_INVALIDATIONS.labels(outcome="unconfirmed")._value.get()
    response = app.test_client().put("/shop", json={"id": 1, "name": "renamed"}, headers=admin)
    assert response.status_code == 202 and response.json["success"] is True
    assert CACHE_INVALIDATIONS.labels(outcome="unconfirmed")._value.get() == unconfirmed + 1
    # the task's run waits out the 1 s TTL instead: confirmed
    region = shop_region(svc.redis, svc.db, svc.settings)
    waited = CACHE_INVALIDATIONS.labels(outcome="waited_ttl")._value.get()
    assert converge_shop(region, svc.db, 1, region.config.near_ttl).done
    assert CACHE_INVALIDATIONS.labels(outcome="waited_ttl")._value.get() == waited + 1


def test_the_first_sweep_after_a_seed_skips_what_the_seed_loaded_and_finds_a_later_write(
    app, seeded
):
    """The seed caches and indexes every shop itself: beat's first sweep has nothing to redo."""
    from datetime import UTC, datetime, timedelta

    from models.entities import Shop

    svc = seeded
    region = shop_region(svc.redis, svc.db, svc.settings)
    mark = float(svc.redis.get(SWEEP_MARK_KEY))
    assert converge_updated(region, svc.db).shops == 0

    with svc.db.sessions() as session, session.begin():
        shop = session.get(Shop, 3)
        shop.name = "renamed after the seed"
        # a second on: MariaDB's DATETIME keeps whole seconds
        shop.update_time = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=1)
    report = converge_updated(region, svc.db)
    assert report.shops == 1 and report.unfinished == []

    # The sweep's mark stays ahead while the seed's window lasts, and a second seed
    # leaves a mark alone (its window may hold a write only the sweep retries).
    assert float(svc.redis.get(SWEEP_MARK_KEY)) == mark
    svc.redis.set(SWEEP_MARK_KEY, repr(mark - 3600))
    for step in app.extensions["hmdp_post_seed"]:
        step(svc)
    assert float(svc.redis.get(SWEEP_MARK_KEY)) == mark - 3600
