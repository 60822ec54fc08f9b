"""Settling reservations into rows (tasks/orders.py) and Stream recovery, in-process.

Real Redis and real databases; the process-level tests (workers killed, broker
and database outages) are in test_orders_workers.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY
from seckill_helpers import add_shop, create_seckill, db_orders, db_stock, order_count
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from beat.order_jobs import run_recovery
from cache import order_stream
from cache.order_stream import OrderEntry, recover
from cache.seckill import SeckillGate
from models.entities import SeckillVoucher, VoucherOrder
from services import Services
from tasks.app import create_celery
from tasks.orders import (
    CREATED,
    DUPLICATE,
    OVERSELL,
    REJECTED,
    TASK_NAME,
    persist_order,
    run_order_task,
    settle_order,
)
from web.orders import ORDER_TASK, verify_orders


@pytest.fixture
def voucher(client, services, login_as) -> int:
    add_shop(services)
    return create_seckill(client, login_as(1, role="admin"), stock=50)


def _reserve(services, voucher_id: int, users) -> list[OrderEntry]:  # type: ignore[no-untyped-def]
    gate = SeckillGate(services.redis, services.settings)
    entries = []
    for user in users:
        r = gate.reserve(voucher_id, user)
        assert r.ok, r
        entries.append(OrderEntry(r.order_id, user, voucher_id, r.stream_id))
    return entries


def test_task_name_is_the_one_the_web_dispatches():
    assert TASK_NAME == ORDER_TASK


def test_same_task_three_times_gives_one_row(services, voucher, settings):
    (entry,) = _reserve(services, voucher, [7])
    payload = entry.to_payload()
    outcomes = [run_order_task(services, dict(payload)) for _ in range(3)]
    assert outcomes == [CREATED, DUPLICATE, DUPLICATE]
    assert db_orders(services, voucher) == [(entry.order_id, 7)]
    assert db_stock(services, voucher) == 49
    assert services.redis.xlen(settings.order_stream) == 0  # settled: deleted


def test_celery_task_body_run_directly_three_times(services, voucher, settings):
    import tasks.orders  # noqa: F401  (registers the shared task)

    app = create_celery(settings, services)
    task = app.tasks[TASK_NAME]
    (entry,) = _reserve(services, voucher, [8])
    assert [task.run(entry.to_payload()) for _ in range(3)] == [CREATED, DUPLICATE, DUPLICATE]
    assert len(db_orders(services, voucher)) == 1 and db_stock(services, voucher) == 49


def test_concurrent_settles_of_one_entry_give_one_row(services, voucher):
    (entry,) = _reserve(services, voucher, [9])
    start = threading.Barrier(8)

    def settle(_: int) -> str:
        start.wait()
        return settle_order(services, entry)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(settle, range(8)))
    assert sorted(outcomes) == [CREATED] + [DUPLICATE] * 7
    assert len(db_orders(services, voucher)) == 1 and db_stock(services, voucher) == 49


def test_without_the_lock_the_unique_constraint_still_gives_one_row(services, voucher):
    """The last line of defence alone: racing inserts, no lock, no early return."""
    entries = _reserve(services, voucher, [10])
    start = threading.Barrier(6)

    def persist(_: int) -> str:
        start.wait()
        for attempt in range(50):  # "database is locked" / deadlock under the race: retry
            try:
                return persist_order(services.db, entries[0])
            except OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.01)
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(persist, range(6)))
    assert outcomes.count(CREATED) == 1 and outcomes.count(DUPLICATE) == 5
    assert db_stock(services, voucher) == 49


def test_same_user_other_order_id_is_not_persisted_twice(services, voucher):
    (entry,) = _reserve(services, voucher, [11])
    assert settle_order(services, entry) == CREATED
    twin = OrderEntry(entry.order_id + 1, entry.user_id, entry.voucher_id, None)
    assert settle_order(services, twin) == DUPLICATE
    assert len(db_orders(services, voucher)) == 1


def test_order_id_owned_by_another_order_is_dead_lettered(services, voucher, settings):
    (entry,) = _reserve(services, voucher, [12])
    assert settle_order(services, entry) == CREATED
    (other,) = _reserve(services, voucher, [13])
    clash = OrderEntry(entry.order_id, 13, voucher, other.stream_id)
    assert settle_order(services, clash) == REJECTED
    assert len(db_orders(services, voucher)) == 1
    dead = services.redis.xrange(settings.order_dead_letter_stream)
    assert len(dead) == 1 and "another order" in dead[0][1]["reason"]


def test_oversell_attempt_writes_nothing_and_is_dead_lettered(services, voucher, settings):
    """Database stock exhausted while Redis still reserved: refused loudly, never sold."""
    entries = _reserve(services, voucher, [20, 21])
    with services.db.session() as session:
        session.execute(
            update(SeckillVoucher).where(SeckillVoucher.voucher_id == voucher).values(stock=1)
        )
    before = REGISTRY.get_sample_value("hmdp_order_oversell_attempts_total") or 0
    assert settle_order(services, entries[0]) == CREATED
    assert settle_order(services, entries[1]) == OVERSELL
    assert REGISTRY.get_sample_value("hmdp_order_oversell_attempts_total") == before + 1
    assert db_orders(services, voucher) == [(entries[0].order_id, 20)]
    assert db_stock(services, voucher) == 0
    dead = services.redis.xrange(settings.order_dead_letter_stream)
    assert [f["orderId"] for _, f in dead] == [str(entries[1].order_id)]
    assert dead[0][1]["reason"].startswith("oversell")
    assert services.redis.xlen(settings.order_stream) == 0
    assert not verify_orders(services, voucher).ok


@pytest.mark.parametrize(
    "payload",
    [None, [], {}, {"orderId": "x", "userId": 1, "voucherId": 1}, {"orderId": 1, "userId": -1}],
)
def test_malformed_payloads_are_rejected_without_writes(services, voucher, payload):
    assert run_order_task(services, payload) == REJECTED
    assert order_count(services) == 0


# --- recovery ---------------------------------------------------------------------------------


def _recovery_services(settings, **changes) -> Services:  # type: ignore[no-untyped-def]
    return Services(settings.with_(**changes))


def test_recovery_settles_old_undispatched_entries_and_leaves_young_ones(
    services, voucher, settings
):
    entries = _reserve(services, voucher, range(100, 110))
    last_ms = int(entries[-1].stream_id.split("-")[0])
    first_ms = int(entries[0].stream_id.split("-")[0])
    # "now" such that nothing is old enough yet: nothing happens
    report = recover(
        services.redis,
        settings,
        lambda e: settle_order(services, e),
        now_ms=first_ms + settings.order_claim_idle_ms - 1,
    )
    assert report.picked_up == 0 and order_count(services) == 0
    report = recover(
        services.redis,
        settings,
        lambda e: settle_order(services, e),
        now_ms=last_ms + settings.order_claim_idle_ms,
    )
    assert report.picked_up == 10 and report.settled == {CREATED: 10}
    assert order_count(services) == 10 and services.redis.xlen(settings.order_stream) == 0
    assert services.redis.xpending(settings.order_stream, settings.order_group)["pending"] == 0


def test_recovery_claims_entries_stuck_with_a_dead_consumer(services, voucher, settings):
    entries = _reserve(services, voucher, range(200, 205))
    order_stream.ensure_group(services.redis, settings)
    # a consumer read them and died before settling
    services.redis.xreadgroup(settings.order_group, "dead-one", {settings.order_stream: ">"})
    # ... and a task settled one of them meanwhile (entry deleted, still in the PEL)
    assert settle_order(services, entries[0]) == CREATED
    assert services.redis.xpending(settings.order_stream, settings.order_group)["pending"] == 4
    services.redis.xgroup_createconsumer(settings.order_stream, settings.order_group, "x")
    svc = _recovery_services(settings, order_claim_idle_ms=0)
    try:
        report = run_recovery(svc)
    finally:
        svc.close()
    assert report["claimed"] == 4 and report["settled"] == {CREATED: 4}
    assert sorted(u for _, u in db_orders(services, voucher)) == list(range(200, 205))
    assert services.redis.xpending(settings.order_stream, settings.order_group)["pending"] == 0
    assert services.redis.xlen(settings.order_stream) == 0


def test_recovery_clears_pel_ids_of_entries_already_settled(services, voucher, settings):
    """Redis 6.2 answers a deleted entry as nil, 7 leaves it out: both end acked."""
    entries = _reserve(services, voucher, range(300, 303))
    order_stream.ensure_group(services.redis, settings)
    services.redis.xreadgroup(settings.order_group, "dead-one", {settings.order_stream: ">"})
    for entry in entries:
        settle_order(services, entry)  # XACK clears them ... so re-add PEL ids by hand:
    ids = [e.stream_id for e in _reserve(services, voucher, range(310, 312))]
    services.redis.xreadgroup(settings.order_group, "dead-one", {settings.order_stream: ">"})
    services.redis.xdel(settings.order_stream, *ids)  # deleted but pending: the odd case
    report = recover(
        services.redis,
        settings,
        lambda e: settle_order(services, e),
        now_ms=int(time.time() * 1000),
    )
    # claim_idle_ms is 30 s: nothing idle enough yet
    assert report.acked_deleted == 0
    svc = _recovery_services(settings, order_claim_idle_ms=0)
    try:
        report = run_recovery(svc)
    finally:
        svc.close()
    assert report["acked_deleted"] == 2 and report["claimed"] == 0
    assert services.redis.xpending(settings.order_stream, settings.order_group)["pending"] == 0


def test_an_entry_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    services, voucher, settings
):
    (entry,) = _reserve(services, voucher, [400])
    fast = settings.with_(order_claim_idle_ms=0, order_max_deliveries=3)
    calls = []

    def failing(e: OrderEntry) -> str:
        calls.append(e.stream_id)
        raise RuntimeError("boom")

    for run in range(3):
        report = recover(services.redis, fast, failing, max_failures=10)
        assert report.failed == 1 and report.dead_lettered == 0, (run, report)
        time.sleep(0.002)
    report = recover(services.redis, fast, failing, max_failures=10)
    assert report.dead_lettered == 1 and report.failed == 0
    assert calls == [entry.stream_id] * 3
    dead = services.redis.xrange(settings.order_dead_letter_stream)
    assert dead[0][1]["orderId"] == str(entry.order_id)
    assert dead[0][1]["deliveries"] == "3" and dead[0][1]["sourceId"] == entry.stream_id
    assert services.redis.xlen(settings.order_stream) == 0
    assert services.redis.xpending(settings.order_stream, settings.order_group)["pending"] == 0


def test_malformed_stream_entries_go_to_the_dead_letter_stream(services, voucher, settings):
    order_stream.ensure_group(services.redis, settings)
    bad = services.redis.xadd(settings.order_stream, {"orderId": "oops", "userId": "1"})
    fast = settings.with_(order_claim_idle_ms=0)
    time.sleep(0.002)
    report = recover(services.redis, fast, lambda e: settle_order(services, e))
    assert report.dead_lettered == 1
    dead = services.redis.xrange(settings.order_dead_letter_stream)
    assert dead[0][1]["sourceId"] == bad and dead[0][1]["reason"].startswith("malformed")


def test_repeated_failures_abort_the_run_without_touching_the_rest(services, voucher, settings):
    _reserve(services, voucher, range(500, 510))
    fast = settings.with_(order_claim_idle_ms=0)
    time.sleep(0.002)

    def failing(e: OrderEntry) -> str:
        raise ConnectionError("database down")

    report = recover(services.redis, fast, failing, max_failures=3)
    assert report.aborted and report.failed == 3
    # the untried ones were delivered once (read) but not counted as attempts beyond that
    report = recover(services.redis, fast, lambda e: settle_order(services, e))
    assert report.settled == {CREATED: 10} and order_count(services) == 10


def test_recovery_is_skipped_while_the_database_is_down(services, voucher, settings):
    _reserve(services, voucher, [600])
    down = _recovery_services(
        settings,
        order_claim_idle_ms=0,
        database_url="mysql+pymysql://nobody@127.0.0.1:1/none?connect_timeout=1",
    )
    try:
        assert run_recovery(down) == {"skipped": "database unavailable"}
    finally:
        down.close()
    assert services.redis.xlen(settings.order_stream) == 1
    group = services.redis.xinfo_groups(settings.order_stream)[0]
    assert group["pending"] == 0  # no delivery spent


def test_task_and_recovery_racing_on_many_entries_give_one_row_each(services, voucher, settings):
    entries = _reserve(services, voucher, range(700, 740))
    fast = _recovery_services(settings, order_claim_idle_ms=0)
    time.sleep(0.002)
    try:
        with ThreadPoolExecutor(4) as pool:
            tasks = pool.map(lambda e: run_order_task(services, e.to_payload()), entries)
            recovered = pool.submit(run_recovery, fast)
            outcomes = list(tasks)
            report = recovered.result()
    finally:
        fast.close()
    created = outcomes.count(CREATED) + report["settled"].get(CREATED, 0)
    assert created == 40
    rows = db_orders(services, voucher)
    assert len(rows) == 40 and len({u for _, u in rows}) == 40
    assert db_stock(services, voucher) == 10
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0, audit.lines()


# --- the audit ------------------------------------------------------------------------------


def test_verify_passes_while_pending_and_after_settling(services, voucher, app):
    entries = _reserve(services, voucher, range(800, 805))
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 5
    for entry in entries:
        settle_order(services, entry)
    audit = verify_orders(services)
    assert audit.ok and audit.unsettled == 0
    result = app.test_cli_runner().invoke(args=["orders", "verify", str(voucher), "--drained"])
    assert result.exit_code == 0, result.output
    assert "result: OK" in result.output and "orders=5" in result.output


def test_verify_catches_loss_phantoms_and_stock_drift(services, voucher, app, settings):
    entries = _reserve(services, voucher, range(900, 903))
    settle_order(services, entries[0])
    # a reservation vanishes from the Stream without a row: lost
    services.redis.xdel(settings.order_stream, entries[1].stream_id)
    audit = verify_orders(services, voucher)
    assert not audit.ok and audit.vouchers[0].lost == 1
    runner = app.test_cli_runner()
    result = runner.invoke(args=["orders", "verify", str(voucher)])
    assert result.exit_code == 1 and "LOST" in result.output
    # a row nobody reserved: phantom; and the initial-stock equation breaks
    with services.db.session() as session:
        session.add(VoucherOrder(id=1, user_id=999, voucher_id=voucher))
    audit = verify_orders(services, voucher)
    assert audit.vouchers[0].phantom == 1
    assert any("initial stock differs" in p for p in audit.vouchers[0].problems)
    # pending entries alone are not a failure, unless --drained is asked for
    services.redis.delete(f"seckill:order:{voucher}", f"seckill:stock:{voucher}")
    with services.db.session() as session:
        session.query(VoucherOrder).delete()
    fresh = create_seckill(app.test_client(), _admin(services), stock=3)
    _reserve(services, fresh, [1])
    assert runner.invoke(args=["orders", "verify", str(fresh)]).exit_code == 0
    assert runner.invoke(args=["orders", "verify", str(fresh), "--drained"]).exit_code == 1


def _admin(services) -> dict:  # type: ignore[no-untyped-def]
    import uuid

    token = uuid.uuid4().hex
    services.redis.hset(
        f"login:token:{token}", mapping={"id": 1, "nickName": "a", "icon": "", "role": "admin"}
    )
    return {"authorization": token}


def test_the_task_and_the_recovery_job_are_imported_scheduled_and_routed(settings, services):
    import celeryconfig
    from beat.order_jobs import JOB_NAME

    assert {"tasks.orders", "beat.order_jobs"} <= set(celeryconfig.imports)
    entry = celeryconfig.beat_schedule["recover-pending-orders"]
    assert entry["task"] == JOB_NAME and 0 < entry["schedule"] <= 30
    app = create_celery(settings, services)
    router = app.amqp.router
    assert router.route({}, TASK_NAME)["queue"].name == "orders"
    assert router.route({}, JOB_NAME)["queue"].name == "beat"
