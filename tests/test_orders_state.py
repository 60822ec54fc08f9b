"""Redis losing gate state: drift events, reconciliation, reloading stock.

Real Redis and real databases. Redis "loses" state for real: keys deleted as an
operator would, or (the process test) redis-server killed and restarted from a
copy of its AOF taken before the last reservations. After every fault the audit
(``verify_orders``) is asserted: exact where the fault was repaired, and
reporting exactly the ids that will never be rows where it cannot be.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from support.seckill import (
    add_shop,
    create_seckill,
    db_orders,
    db_stock,
    dead_letter_count,
    stream_entries,
    stream_length,
)

from cache import reconcile as reconcile_module
from cache.ids import counter_key, split
from cache.order_stream import OrderEntry, stream_key
from cache.reconcile import FOUND_KEY, MISSING, Reconciler, drift_records, parse_found
from cache.seckill import OK, SOLD_OUT, SeckillGate
from cache.server import EmbeddedRedis
from tasks.orders import CREATED, DRIFT, run_order_task, settle_order
from web.orders import verify_orders

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


def found_drift(client) -> dict[int, int]:
    """The drift the last reconciliations found per voucher (what the gauge reads)."""
    return parse_found(client.hgetall(FOUND_KEY))


@pytest.fixture
def admin(login_as, services):  # type: ignore[no-untyped-def]
    add_shop(services)
    return login_as(1, role="admin")


def _order(client, login_as, voucher_id: int, user: int):  # type: ignore[no-untyped-def]
    return client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(user))


def _entries(services) -> list[OrderEntry]:  # type: ignore[no-untyped-def]
    return [OrderEntry.from_fields(fields, sid) for sid, fields in stream_entries(services)]


def _settle_all(services) -> None:  # type: ignore[no-untyped-def]
    for entry in _entries(services):
        settle_order(services, entry)


def _counters(ids) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The id counter keys that made ``ids`` (decimal strings or ints), each with its highest count."""
    tops: dict[str, int] = {}
    for order_id in ids:
        second, slot, count = split(int(order_id))
        key = counter_key("order", second, slot)
        tops[key] = max(tops.get(key, 0), count)
    return tops


def _drift_events() -> float:
    return REGISTRY.get_sample_value("hmdp_order_drift_total") or 0.0


def _reserve(services, voucher_id: int, users) -> dict[int, int]:  # type: ignore[no-untyped-def]
    gate = SeckillGate(services.redis, services.settings)
    ids = {}
    for user in users:
        result = gate.reserve(voucher_id, user)
        assert result.ok, result
        ids[user] = result.order_id
    return ids


# --- point 4: a second reservation of one buyer is a drift event ------------------------------


def test_a_buyer_redis_forgot_orders_again_and_the_audit_names_the_id_that_will_never_exist(
    app, client, admin, login_as, services
):
    voucher_id = create_seckill(client, admin, stock=10)
    first = _order(client, login_as, voucher_id, 7).json["data"]
    _settle_all(services)
    # Redis loses the buyer (and the id issued to them): they can order again
    services.redis.srem(f"seckill:order:{{{voucher_id}}}", "7")
    services.redis.hdel(f"seckill:orderid:{{{voucher_id}}}", "7")
    again = _order(client, login_as, voucher_id, 7)
    assert again.status_code == 200 and again.json["data"] != first
    second = again.json["data"]
    audit = verify_orders(services, voucher_id)  # before it settles: already foreseen
    (never,) = audit.vouchers[0].never_rows
    assert (never.order_id, never.user_id, never.row_id) == (int(second), 7, int(first))
    assert not audit.ok

    events = _drift_events()
    (entry,) = _entries(services)
    assert run_order_task(services, entry.to_payload()) == DRIFT  # the batch path
    assert _drift_events() == events + 1
    assert stream_length(services) == 0  # acknowledged
    assert db_orders(services, voucher_id) == [(int(first), 7)]  # no second row
    (record,) = drift_records(services.redis, voucher_id)
    assert (record.issued_id, record.user_id, record.row_id) == (int(second), 7, int(first))
    # the buyer's records point at the order that exists: a retry learns it
    retry = _order(client, login_as, voucher_id, 7)
    assert (retry.status_code, retry.json["data"]) == (409, first)

    result = app.test_cli_runner().invoke(args=["orders", "verify", str(voucher_id)])
    assert result.exit_code == 1, result.output
    assert (
        f"order id {second} answered 200 to user 7 will never exist: their order is {first}"
        in result.output
    )
    audit = verify_orders(services, voucher_id)
    assert [n.order_id for n in audit.vouchers[0].never_rows] == [int(second)]
    assert audit.vouchers[0].unissued == 0


def test_drift_through_the_one_order_path_is_recorded_once_however_often_delivered(
    client, admin, services
):
    voucher_id = create_seckill(client, admin, stock=10)
    ids = _reserve(services, voucher_id, [3])
    _settle_all(services)
    services.redis.srem(f"seckill:order:{{{voucher_id}}}", "3")
    twin = _reserve(services, voucher_id, [3])[3]
    (entry,) = _entries(services)
    assert settle_order(services, entry) == DRIFT
    assert settle_order(services, entry) == DRIFT  # a redelivery: nothing written twice
    (record,) = drift_records(services.redis, voucher_id)
    assert (record.issued_id, record.row_id) == (twin, ids[3])
    assert len(db_orders(services, voucher_id)) == 1 and db_stock(services, voucher_id) == 9


def test_the_audit_checks_row_ids_against_the_ids_the_gate_issued(client, admin, services, app):
    voucher_id = create_seckill(client, admin, stock=10)
    ids = _reserve(services, voucher_id, [4, 5, 6])
    _settle_all(services)
    assert verify_orders(services, voucher_id).ok
    # Redis says user 4 was issued another id than their row has
    services.redis.hset(f"seckill:orderid:{{{voucher_id}}}", "4", str(ids[4] + 99))
    audit = verify_orders(services, voucher_id).vouchers[0]
    assert audit.unissued == 1 and not audit.ok
    services.redis.hset(f"seckill:orderid:{{{voucher_id}}}", "4", str(ids[4]))
    # a reservation whose entry vanished without a row: its id is listed as lost
    lost = _reserve(services, voucher_id, [8])[8]
    (entry,) = _entries(services)
    services.redis.xdel(stream_key(services.settings, voucher_id), entry.stream_id)
    audit = verify_orders(services, voucher_id).vouchers[0]
    assert audit.lost == 1
    assert [(n.order_id, n.user_id, n.row_id) for n in audit.never_rows] == [(lost, 8, None)]
    assert "no order exists for them" in audit.never_rows[0].line()


# --- point 5: reconciliation -----------------------------------------------------------------


def test_reconcile_rebuilds_buyers_ids_stock_and_the_id_counter(
    app, client, admin, login_as, services, settings
):
    voucher_id = create_seckill(client, admin, stock=20)
    answered = {u: _order(client, login_as, voucher_id, u).json["data"] for u in range(1, 11)}
    for entry in _entries(services)[:6]:
        assert settle_order(services, entry) == CREATED  # 6 rows, 4 reservations unsettled
    # Redis loses the voucher's gate state and the id counters that made its ids
    counters = _counters(answered.values())
    services.redis.delete(
        f"seckill:order:{{{voucher_id}}}",
        f"seckill:orderid:{{{voucher_id}}}",
        f"seckill:stock:{{{voucher_id}}}",
        *counters,
    )
    result = app.test_cli_runner().invoke(args=["orders", "reconcile"])
    assert result.exit_code == 0, result.output
    assert f"voucher {voucher_id}: stock None -> 10, buyers added 10, ids fixed 10" in result.output
    for key, top in counters.items():
        assert f"id counter {key}: 0 -> {top}" in result.output
    assert found_drift(services.redis)[voucher_id] == 21  # 10 buyers + 10 ids + 1 stock lost
    assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "10"  # 20 - 6 rows - 4 waiting
    # the same users are refused as already ordered, with their ids
    for user, order_id in answered.items():
        again = _order(client, login_as, voucher_id, user)
        assert (again.status_code, again.json["data"]) == (409, order_id)
    # the rest sells exactly once, with ids never issued before
    fresh = [_order(client, login_as, voucher_id, u) for u in range(11, 26)]
    sold = [r.json["data"] for r in fresh if r.status_code == 200]
    assert len(sold) == 10 and not set(sold) & set(answered.values())
    for order_id in sold:  # a counter that made answered ids goes on above them
        ((key, count),) = _counters([order_id]).items()
        assert count > counters.get(key, 0)
    assert {r.json["errorMsg"] for r in fresh if r.status_code != 200} == {"sold out"}
    _settle_all(services)
    assert len(db_orders(services, voucher_id)) == 20 and db_stock(services, voucher_id) == 0
    audit = verify_orders(services, voucher_id)
    assert audit.ok and audit.unsettled == 0, audit.lines()
    # a second run finds nothing to repair (and keeps the repair visible for the gauge)
    report = Reconciler(services.redis, settings, services.db).run()
    assert report.drift == 0 and found_drift(services.redis)[voucher_id] == 21
    assert services.redis.hexists(FOUND_KEY, str(voucher_id))


def test_reconcile_lowers_a_stock_redis_restored_too_high(client, admin, login_as, services):
    voucher_id = create_seckill(client, admin, stock=5)
    for user in range(1, 4):
        _order(client, login_as, voucher_id, user)
    _settle_all(services)
    # an older copy of Redis: 3 units were sold since, Redis does not know
    services.redis.set(f"seckill:stock:{{{voucher_id}}}", 5)
    services.redis.delete(f"seckill:order:{{{voucher_id}}}", f"seckill:orderid:{{{voucher_id}}}")
    (repair,) = Reconciler(services.redis, services.settings, services.db).run().vouchers
    assert (repair.stock_before, repair.stock_after) == (5, 2)
    codes = [_order(client, login_as, voucher_id, u).status_code for u in range(1, 8)]
    assert codes == [409, 409, 409, 200, 200, 409, 409]
    _settle_all(services)
    assert verify_orders(services, voucher_id).ok
    assert dead_letter_count(services) == 0  # no oversell


def test_reconcile_while_sales_and_settlements_run_never_sells_a_unit_twice(
    app, client, admin, services, settings
):
    """Sellers, a settler and reconciliations at once: the stock stays exact throughout."""
    stock = 150
    voucher_id = create_seckill(client, admin, stock=stock)
    gate = SeckillGate(services.redis, settings)
    reconciler = Reconciler(services.redis, settings, services.db)
    answered: dict[int, int] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(work):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                stop.set()

        return threading.Thread(target=run)

    runs: list = []

    def await_a_reconciliation() -> None:
        # The sale waits for the reconciler now and then, so that reconciliations
        # run while it sells however slow the box is.
        seen = len(runs)
        deadline = time.monotonic() + 60
        while len(runs) == seen and not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)

    def sell(first: int) -> None:
        sold = 0
        for user in range(first, first + 2000, 2):
            if stop.is_set():
                return
            result = gate.reserve(voucher_id, user)
            if result.outcome == OK:
                answered[user] = result.order_id
                sold += 1
                if sold % 15 == 0:
                    await_a_reconciliation()
            elif result.outcome == SOLD_OUT:
                return
            time.sleep(0.003)

    def settle() -> None:
        while not stop.is_set():
            entries = _entries(services)
            if entries:
                run_order_task(services, entries[0].to_payload())
            else:
                time.sleep(0.005)

    def reconcile() -> None:
        while not stop.is_set():
            runs.append(reconciler.run())

    threads = [guarded(lambda: sell(1000)), guarded(lambda: sell(1001))]
    helpers = [guarded(settle), guarded(reconcile)]
    for thread in threads + helpers:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    for thread in helpers:
        thread.join(60)
    assert not errors, errors
    assert len(runs) >= 5  # reconciled while selling and settling
    assert len(answered) <= stock  # never more 200s than units
    # Every busy run left the stock exact: nothing held back, nothing sold twice ...
    left = int(services.redis.get(f"seckill:stock:{{{voucher_id}}}"))
    assert left == stock - len(answered)
    _settle_all(services)
    # ... so a run on a quiet sale finds nothing to repair.
    assert reconciler.run().drift == 0
    more = {u: gate.reserve(voucher_id, u) for u in range(5000, 5000 + left + 5)}
    assert sum(r.outcome == OK for r in more.values()) == left
    assert {r.outcome for r in more.values()} <= {OK, SOLD_OUT}
    _settle_all(services)
    rows = dict((user, oid) for oid, user in db_orders(services, voucher_id))
    assert len(rows) == stock and db_stock(services, voucher_id) == 0
    assert all(rows[user] == oid for user, oid in answered.items())  # every 200 is its row
    assert dead_letter_count(services) == 0  # no oversell
    audit = verify_orders(services, voucher_id)
    assert audit.ok and audit.unsettled == 0, audit.lines()


def test_a_sale_settled_between_the_snapshot_and_the_database_read_counts_once(
    client, admin, services, monkeypatch
):
    """A reservation after the snapshot is in the live stock's fall; settled before the
    database read, it is in the database's stock too: subtracted once, not twice."""
    voucher_id = create_seckill(client, admin, stock=10)
    _reserve(services, voucher_id, [1, 2])
    _settle_all(services)
    read_database = reconcile_module._read_database

    def sale_then_read(*args, **kwargs):  # type: ignore[no-untyped-def]
        _reserve(services, voucher_id, [3])  # after the snapshot ...
        _settle_all(services)  # ... and a row before the database is read
        return read_database(*args, **kwargs)

    monkeypatch.setattr(reconcile_module, "_read_database", sale_then_read)
    (repair,) = Reconciler(services.redis, services.settings, services.db).run().vouchers
    assert (repair.stock_before, repair.stock_after, repair.drift) == (7, 7, 0)
    assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "7"
    assert db_stock(services, voucher_id) == 7
    assert verify_orders(services, voucher_id).ok


@pytest.mark.process
def test_redis_restarted_from_an_older_aof_is_reconciled(
    app_with, tmp_path: Path, login_as, settings
):
    """redis-server SIGKILLed and started again from an AOF copy taken 5 reservations ago."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        app = app_with(redis_url=server.url)
        services = app.extensions["hmdp"]
        client = app.test_client()
        login = _login_on(services)
        add_shop(services)
        voucher_id = create_seckill(client, login(1, "admin"), stock=20)
        answered = {u: _order(client, login, voucher_id, u).json["data"] for u in range(1, 11)}
        for entry in _entries(services)[:4]:
            settle_order(services, entry)
        reconciler = Reconciler(services.redis, services.settings, services.db)
        assert reconciler.run_if_lost(3600).full == "no full pass recorded in this Redis"
        assert reconciler.run_if_lost(3600).full is None  # the same process: nothing lost
        aof = _aof_path(server)
        copy = tmp_path / "aof-copy"
        _copy(aof, copy)  # taken while running: 10 reservations, 4 rows
        answered |= {u: _order(client, login, voucher_id, u).json["data"] for u in range(11, 16)}
        _settle_all(services)  # 15 rows; Redis is about to forget the last 5 reservations
        port = server.port
        server.process.kill()
        server.process.wait()
        _copy(copy, aof)
        server = EmbeddedRedis(tmp_path / "redis", port=port).start()
        services.close()  # fresh connections to the restarted server
        # the old copy: stock 10, buyers 1..10, the counter at 10, the 6 then-unsettled entries
        assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "10"
        assert services.redis.scard(f"seckill:order:{{{voucher_id}}}") == 10
        # what the beat runs: the copy's record of the last full pass names the old process
        report = Reconciler(services.redis, services.settings, services.db).run_if_lost(3600)
        assert report.full == "another Redis process than at the last full pass"
        (repair,) = report.vouchers
        assert (repair.stock_before, repair.stock_after, repair.buyers_added) == (10, 5, 5)
        counters = _counters(answered.values())  # the copy lost the last 5 ids' counts
        assert report.counters_raised and all(
            now == counters[key] for key, (_, now) in report.counters_raised.items()
        )
        login = _login_on(services)  # sessions were in the lost part of the AOF too
        for user, order_id in answered.items():
            again = _order(client, login, voucher_id, user)
            assert (again.status_code, again.json["data"]) == (409, order_id)
        fresh = {u: _order(client, login, voucher_id, u) for u in range(16, 24)}
        sold = [r.json["data"] for r in fresh.values() if r.status_code == 200]
        assert len(sold) == 5 and not set(sold) & set(answered.values())
        _settle_all(services)  # the 6 entries the copy brought back are duplicates: acked
        assert stream_length(services) == 0
        assert len(db_orders(services, voucher_id)) == 20 and db_stock(services, voucher_id) == 0
        assert dead_letter_count(services) == 0
        audit = verify_orders(services, voucher_id)
        assert audit.ok and audit.unsettled == 0, audit.lines()
    finally:
        server.stop()


def _login_on(services):  # type: ignore[no-untyped-def]
    from support.sessions import session_for

    def login(user_id: int, role: str = "user") -> dict[str, str]:
        return session_for(services, user_id, role)

    return login


def _aof_path(server: EmbeddedRedis) -> Path:
    """Redis 7 keeps a directory of AOF parts, Redis 6 one file."""
    directory = server.data_dir / "appendonlydir"
    return directory if directory.is_dir() else server.data_dir / "appendonly.aof"


def _copy(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


# --- point 6: a missing stock is loaded minus the unsettled reservations -----------------------


def test_a_missing_stock_is_loaded_minus_the_reservations_not_settled_yet(
    client, admin, login_as, services
):
    voucher_id = create_seckill(client, admin, stock=10)
    for user in range(1, 5):
        assert _order(client, login_as, voucher_id, user).status_code == 200
    settle_order(services, _entries(services)[0])  # 1 row, 3 reservations unsettled
    services.redis.delete(f"seckill:stock:{{{voucher_id}}}")
    # the next order loads it: 10 - 1 (row, in the database stock) - 3 waiting = 6, minus its own
    assert _order(client, login_as, voucher_id, 5).status_code == 200
    assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "5"
    codes = [_order(client, login_as, voucher_id, u).status_code for u in range(6, 16)]
    assert codes.count(200) == 5
    _settle_all(services)
    assert len(db_orders(services, voucher_id)) == 10 and db_stock(services, voucher_id) == 0
    assert dead_letter_count(services) == 0  # no oversell
    audit = verify_orders(services, voucher_id)
    assert audit.ok and audit.unsettled == 0, audit.lines()


def test_seeding_again_loads_lost_stock_minus_pending_and_keeps_present_stock(
    client, admin, services, login_as
):
    from web.vouchers import post_seed

    kept = create_seckill(client, admin, stock=5)
    lost = create_seckill(client, admin, stock=9)
    _order(client, login_as, kept, 2)
    for user in (3, 4):
        _order(client, login_as, lost, user)
    services.redis.delete(f"seckill:stock:{{{lost}}}", f"seckill:window:{{{lost}}}")
    post_seed(services)
    assert services.redis.get(f"seckill:stock:{{{kept}}}") == "4"
    assert services.redis.get(f"seckill:stock:{{{lost}}}") == "7"  # 9 - 2 unsettled
    report = Reconciler(services.redis, services.settings, services.db).run(
        [kept, lost], mode=MISSING
    )
    assert report.vouchers == []  # nothing missing: nothing read, nothing written
    _settle_all(services)
    assert verify_orders(services).ok


# --- operations: the beat job, the gauge, the alerts ------------------------------------------


def test_the_beat_reads_every_row_only_when_redis_may_have_lost_state(client, admin, services):
    """Cheap checks between full passes: a deleted key shows, a same-sized edit waits for the
    periodic full pass (the process restart is in the AOF test above)."""
    voucher_id = create_seckill(client, admin, stock=5)
    _reserve(services, voucher_id, [5, 6])
    reconciler = Reconciler(services.redis, services.settings, services.db)
    buyers, issued = f"seckill:order:{{{voucher_id}}}", f"seckill:orderid:{{{voucher_id}}}"
    first = reconciler.run_if_lost(3600)
    assert first.full == "no full pass recorded in this Redis" and first.drift == 0
    assert [v.voucher_id for v in first.vouchers] == [voucher_id]
    quiet = reconciler.run_if_lost(3600)
    assert (quiet.full, quiet.vouchers, quiet.drift) == (None, [], 0)
    # a buyer and their id both removed: the counts still pair up, nothing is read ...
    services.redis.srem(buyers, "5")
    services.redis.hdel(issued, "5")
    assert reconciler.run_if_lost(3600).full is None
    assert services.redis.smembers(buyers) == {"6"}
    # ... until the periodic full pass, which puts them back (the entries are unsettled)
    periodic = reconciler.run_if_lost(0)
    assert periodic.full == "the last full pass is 0 s old" and periodic.drift == 2
    assert services.redis.smembers(buyers) == {"5", "6"}
    # a key deleted, or the stock: the next pass is a full one
    services.redis.delete(issued)
    deleted = reconciler.run_if_lost(3600)
    assert deleted.full == f"gate state deleted: vouchers [{voucher_id}]" and deleted.drift == 2
    services.redis.delete(f"seckill:stock:{{{voucher_id}}}")
    restocked = reconciler.run_if_lost(3600)
    assert restocked.full == f"gate state deleted: vouchers [{voucher_id}]"
    assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "3"
    assert reconciler.run_if_lost(3600).full is None
    # a flushed Redis keeps no record: full
    services.redis.delete(reconcile_module.SEEN_KEY)
    assert reconciler.run_if_lost(3600).full == "no full pass recorded in this Redis"


def test_beat_reconciles_and_the_drift_found_is_a_gauge_with_alerts(
    client, admin, services, settings
):
    import yaml
    from support.env import ROOT

    import celeryconfig
    from beat.order_jobs import RECONCILE_JOB, run_reconcile
    from tasks.app import create_celery

    entry = celeryconfig.beat_schedule["reconcile-seckill-state"]
    assert entry["task"] == RECONCILE_JOB and 0 < entry["schedule"] <= 60
    router = create_celery(settings, services).amqp.router
    assert router.route({}, RECONCILE_JOB)["queue"].name == "beat"
    voucher_id = create_seckill(client, admin, stock=3)
    _reserve(services, voucher_id, [5])
    assert run_reconcile(services)["drift"] == 0
    services.redis.delete(f"seckill:order:{{{voucher_id}}}")
    assert run_reconcile(services)["drift"] == 1  # the buyer put back
    assert services.redis.smembers(f"seckill:order:{{{voucher_id}}}") == {"5"}
    text = client.get("/metrics").get_data(as_text=True)
    assert f'hmdp_seckill_drift{{voucher="{voucher_id}"}} 1.0' in text
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert "hmdp_seckill_drift" in exprs["HmdpSeckillStateDrift"]
    assert "hmdp_order_drift_total" in exprs["HmdpOrderIdDrift"]
