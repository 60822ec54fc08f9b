"""Settling reservations into rows (tasks/orders.py) and Stream recovery, in-process.

Real Redis and real databases; the process-level tests (workers killed, broker
and database outages) are in test_orders_workers.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, event, select, update
from sqlalchemy.exc import OperationalError
from support.lock_child import Child
from support.redis_faults import WritesReset, name_connections
from support.seckill import add_shop, create_seckill, db_orders, db_stock, order_count, wait_for

from beat.order_jobs import RECOVERY_LOCK, recover_orders, run_recovery
from cache import order_stream
from cache.locks import RLock
from cache.order_stream import OrderEntry, dead_letter_key, recover, stream_key, voucher_stream
from cache.seckill import SeckillGate
from models.entities import SeckillVoucher, Voucher, VoucherOrder
from services import Services
from tasks.app import create_celery
from tasks.orders import (
    CREATED,
    DRIFT,
    DUPLICATE,
    OVERSELL,
    REJECTED,
    TASK_NAME,
    persist_order,
    persist_orders,
    run_batch_task,
    run_order_task,
    settle_order,
)
from web.orders import ORDER_TASK, verify_orders

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


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
    assert services.redis.xlen(stream_key(settings, voucher)) == 0  # settled: deleted


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
    assert settle_order(services, twin) == DRIFT  # a second order of one buyer: a drift event
    assert len(db_orders(services, voucher)) == 1


def test_order_id_owned_by_another_order_is_dead_lettered(services, voucher, settings):
    (entry,) = _reserve(services, voucher, [12])
    assert settle_order(services, entry) == CREATED
    (other,) = _reserve(services, voucher, [13])
    clash = OrderEntry(entry.order_id, 13, voucher, other.stream_id)
    assert settle_order(services, clash) == REJECTED
    assert len(db_orders(services, voucher)) == 1
    dead = services.redis.xrange(dead_letter_key(settings, voucher))
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
    dead = services.redis.xrange(dead_letter_key(settings, voucher))
    assert [f["orderId"] for _, f in dead] == [str(entries[1].order_id)]
    assert dead[0][1]["reason"].startswith("oversell")
    assert services.redis.xlen(stream_key(settings, voucher)) == 0
    assert not verify_orders(services, voucher).ok


@pytest.mark.parametrize(
    "payload",
    [None, [], {}, {"orderId": "x", "userId": 1, "voucherId": 1}, {"orderId": 1, "userId": -1}],
)
def test_malformed_payloads_are_rejected_without_writes(services, voucher, payload):
    assert run_order_task(services, payload) == REJECTED
    assert order_count(services) == 0


# --- group commit: a task settles a batch claimed from the Stream ---------------------------


def _batch_settled(outcome: str) -> float:
    value = REGISTRY.get_sample_value("hmdp_order_batch_settled_total", {"outcome": outcome})
    return value or 0.0


def _stream_empty(services, settings, voucher) -> bool:  # type: ignore[no-untyped-def]
    pending = services.redis.xpending(stream_key(settings, voucher), settings.order_group)[
        "pending"
    ]
    return services.redis.xlen(stream_key(settings, voucher)) == 0 and pending == 0


def test_one_task_settles_the_backlog_and_the_others_return_without_the_database(
    services, voucher, settings
):
    entries = _reserve(services, voucher, range(1000, 1030))
    before = _batch_settled(CREATED)
    assert run_order_task(services, entries[5].to_payload()) == CREATED
    assert _batch_settled(CREATED) == before + 29
    assert sorted(db_orders(services, voucher)) == sorted((e.order_id, e.user_id) for e in entries)
    assert db_stock(services, voucher) == 20 and _stream_empty(services, settings, voucher)
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(services.db.engine, "before_cursor_execute", count)
    try:
        outcomes = [run_order_task(services, e.to_payload()) for e in entries]
    finally:
        event.remove(services.db.engine, "before_cursor_execute", count)
    assert outcomes == [DUPLICATE] * 30
    assert statements == []  # settled entries are gone from the Stream: no query needed
    assert len(db_orders(services, voucher)) == 30 and db_stock(services, voucher) == 20
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0, audit.lines()


def test_the_batch_size_bounds_what_one_task_claims(services, voucher, settings):
    small = Services(settings.with_(order_settle_batch=4))
    try:
        entries = _reserve(small, voucher, range(1100, 1110))
        assert run_order_task(small, entries[0].to_payload()) == CREATED
        assert order_count(small) == 4
        assert run_order_task(small, entries[9].to_payload()) == CREATED  # not in the next 4
        assert order_count(small) == 9  # 4 claimed + its own, settled alone
        # a task whose own entry is settled still claims and settles what is left:
        assert run_order_task(small, entries[1].to_payload()) == DUPLICATE
        assert order_count(small) == 10 and _stream_empty(small, settings, voucher)
        assert run_order_task(small, entries[8].to_payload()) == DUPLICATE
    finally:
        small.close()
    one = Services(settings.with_(order_settle_batch=1))  # batching off
    try:
        more = _reserve(one, voucher, range(1110, 1113))
        assert run_order_task(one, more[0].to_payload()) == CREATED
        assert order_count(one) == 11
    finally:
        one.close()


def test_a_busy_user_lock_is_skipped_by_the_batch_then_settled_alone(services, voucher, settings):
    entries = _reserve(services, voucher, range(1200, 1210))
    busy = RLock(services.redis, "lock:order:1204")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.acquire()
        held.set()
        release.wait(10)
        busy.release()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    seen_while_held: list[int] = []

    def settle_batch() -> str:
        return run_order_task(services, entries[0].to_payload())

    with ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(settle_batch)
        wait_for(lambda: order_count(services) == 9, 10, 0.01, "batch without the busy user")
        seen_while_held.extend(u for _, u in db_orders(services, voucher))
        release.set()
        assert outcome.result(timeout=20) == CREATED
    holder.join(10)
    assert 1204 not in seen_while_held
    assert sorted(u for _, u in db_orders(services, voucher)) == list(range(1200, 1210))
    assert db_stock(services, voucher) == 40 and _stream_empty(services, settings, voucher)


def test_a_batch_larger_than_the_database_stock_sells_exactly_what_is_left(
    services, voucher, settings
):
    entries = _reserve(services, voucher, range(1300, 1305))
    with services.db.session() as session:
        session.execute(
            update(SeckillVoucher).where(SeckillVoucher.voucher_id == voucher).values(stock=3)
        )
    before = REGISTRY.get_sample_value("hmdp_order_oversell_attempts_total") or 0
    run_order_task(services, entries[0].to_payload())
    assert db_stock(services, voucher) == 0
    assert [u for _, u in sorted(db_orders(services, voucher), key=lambda r: r[1])] == [
        1300,
        1301,
        1302,
    ]
    assert REGISTRY.get_sample_value("hmdp_order_oversell_attempts_total") == before + 2
    dead = services.redis.xrange(dead_letter_key(settings, voucher))
    assert sorted(f["userId"] for _, f in dead) == ["1303", "1304"]
    assert _stream_empty(services, settings, voucher)


def test_a_batch_with_an_order_already_in_the_database_writes_the_rest_once(
    services, voucher, settings
):
    entries = _reserve(services, voucher, range(1400, 1404))
    assert persist_order(services.db, entries[2]) == CREATED  # a row, entry not yet settled
    before = _batch_settled(DUPLICATE)
    assert run_order_task(services, entries[0].to_payload()) == CREATED
    assert _batch_settled(DUPLICATE) == before + 1
    assert sorted(db_orders(services, voucher)) == sorted((e.order_id, e.user_id) for e in entries)
    assert db_stock(services, voucher) == 46 and _stream_empty(services, settings, voucher)


def test_a_batch_writes_the_rows_the_one_order_path_writes(services, voucher):
    """The batch INSERT is SQL text of its own: the same columns, defaults and timestamps
    as the model's statement, read back through the ORM on either database."""
    single, *batch = _reserve(services, voucher, range(1450, 1454))
    assert persist_order(services.db, single) == CREATED
    assert set(persist_orders(services.db, batch).values()) == {CREATED}
    with services.db.session() as session:
        rows = {row.user_id: row for row in session.scalars(select(VoucherOrder))}

    def written(row: VoucherOrder) -> tuple:
        return tuple(
            getattr(row, c.name) for c in VoucherOrder.__table__.c if "_time" not in c.name
        )

    alone = rows[1450]
    for entry in batch:
        row = rows[entry.user_id]
        assert written(row) == (entry.order_id, entry.user_id, voucher, 1, 1)
        assert written(row)[3:] == written(alone)[3:]
        assert (row.pay_time, row.use_time, row.refund_time) == (None, None, None)
        assert isinstance(row.create_time, datetime) and row.update_time == row.create_time
        assert abs(row.create_time - alone.create_time) < timedelta(minutes=1)


def test_a_batch_claimed_by_a_worker_that_died_is_recovered(services, voucher, settings):
    entries = _reserve(services, voucher, range(1500, 1506))
    present, claimed = order_stream.claim_new(
        services.redis, voucher_stream(settings, voucher), 100, entries[0].stream_id
    )
    assert present and [sid for sid, _ in claimed] == [e.stream_id for e in entries]
    # ... and the claimer dies. The own task of one entry still settles it (alone):
    assert run_order_task(services, entries[0].to_payload()) == CREATED
    assert order_count(services) == 1
    report = _recover_now(settings)
    assert report["claimed"] == 5 and report["settled"] == {CREATED: 5}
    assert sorted(u for _, u in db_orders(services, voucher)) == list(range(1500, 1506))
    assert _stream_empty(services, settings, voucher)


def test_a_task_creates_the_consumer_group_if_it_is_missing(services, voucher, settings):
    entries = _reserve(services, voucher, [1700, 1701])
    services.redis.xgroup_destroy(stream_key(settings, voucher), settings.order_group)
    assert run_order_task(services, entries[1].to_payload()) == CREATED
    assert order_count(services) == 2 and _stream_empty(services, settings, voucher)
    assert [g["name"] for g in services.redis.xinfo_groups(stream_key(settings, voucher))] == [
        settings.order_group
    ]


def test_a_malformed_entry_in_a_batch_is_dead_lettered_and_the_rest_settled(
    services, voucher, settings
):
    entries = _reserve(services, voucher, [1600])
    services.redis.xadd(stream_key(settings, voucher), {"orderId": "x", "userId": "1601"})
    entries += _reserve(services, voucher, [1602])
    assert run_order_task(services, entries[1].to_payload()) == CREATED
    assert sorted(u for _, u in db_orders(services, voucher)) == [1600, 1602]
    dead = services.redis.xrange(dead_letter_key(settings, voucher))
    assert len(dead) == 1 and dead[0][1]["reason"].startswith("malformed")
    assert _stream_empty(services, settings, voucher)


# --- one task message per micro-batch of reservations -------------------------------------


def test_a_batch_message_delivered_three_times_gives_one_row_per_order(services, voucher, settings):
    entries = _reserve(services, voucher, range(1800, 1812))
    payloads = [e.to_payload() for e in entries]
    ids = [str(e.order_id) for e in entries]
    first = run_batch_task(services, [dict(p) for p in payloads])
    assert first == dict.fromkeys(ids, CREATED)
    for _ in range(2):  # redeliveries: every order settled already, no database needed
        assert run_batch_task(services, [dict(p) for p in payloads]) == dict.fromkeys(
            ids, DUPLICATE
        )
    assert sorted(db_orders(services, voucher)) == sorted((e.order_id, e.user_id) for e in entries)
    assert db_stock(services, voucher) == 38 and _stream_empty(services, settings, voucher)


def test_the_celery_task_takes_a_list_and_returns_each_orders_outcome(services, voucher, settings):
    import tasks.orders  # noqa: F401  (registers the shared task)

    task = create_celery(settings, services).tasks[TASK_NAME]
    entries = _reserve(services, voucher, [1820, 1821])
    payloads = [e.to_payload() for e in entries]
    assert task.run(payloads) == {str(e.order_id): CREATED for e in entries}
    assert task.run(payloads) == {str(e.order_id): DUPLICATE for e in entries}
    assert len(db_orders(services, voucher)) == 2 and db_stock(services, voucher) == 48


def test_a_batch_larger_than_the_settle_batch_claims_until_its_own_are_settled(
    services, voucher, settings
):
    small = Services(settings.with_(order_settle_batch=4))
    try:
        older = _reserve(small, voucher, range(1830, 1836))  # another message's, not sent
        mine = _reserve(small, voucher, range(1840, 1850))
        outcomes = run_batch_task(small, [e.to_payload() for e in mine])
        assert outcomes == {str(e.order_id): CREATED for e in mine}
        # the older entries came first in the claims: settled on the way, in batches of 4
        assert order_count(small) == 16 and _stream_empty(small, settings, voucher)
        assert run_batch_task(small, [e.to_payload() for e in older]) == {
            str(e.order_id): DUPLICATE for e in older
        }
    finally:
        small.close()


def test_a_batch_whose_entries_a_dead_worker_claimed_settles_them_itself(
    services, voucher, settings
):
    entries = _reserve(services, voucher, range(1860, 1866))
    present, claimed = order_stream.claim_new(
        services.redis, voucher_stream(settings, voucher), 100
    )
    assert len(claimed) == 6  # ... and the claimer dies: its batch stays in the PEL
    outcomes = run_batch_task(services, [e.to_payload() for e in entries[:4]])
    assert outcomes == {str(e.order_id): CREATED for e in entries[:4]}
    assert order_count(services) == 4
    report = _recover_now(settings)  # the two nobody's message carried: recovery
    assert report["settled"] == {CREATED: 2} and _stream_empty(services, settings, voucher)


def test_a_batch_waits_for_the_settler_holding_its_entry_then_finds_it_settled(
    services, voucher, settings
):
    """Own entries another settler claimed and is settling: no second write, no retry storm."""
    entries = _reserve(services, voucher, range(1880, 1885))
    present, claimed = order_stream.claim_new(
        services.redis, voucher_stream(settings, voucher), 100
    )
    assert len(claimed) == 5  # the other settler's batch ...
    other = entries[2]
    lock = RLock(services.redis, f"lock:order:{other.user_id}")
    held, go = threading.Event(), threading.Event()

    def other_settler() -> None:  # ... which holds one user's lock until it has settled it
        lock.acquire()
        held.set()
        go.wait(20)
        assert persist_order(services.db, other) == CREATED
        order_stream.acknowledge_many(services.redis, settings, [other])
        lock.release()

    holder = threading.Thread(target=other_settler)
    holder.start()
    assert held.wait(10)
    late: list[str] = []  # statements of the batch task after the other settler went on
    batch_thread: list[int] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if go.is_set() and threading.get_ident() in batch_thread:
            late.append(statement)

    def batch() -> dict[str, str]:
        batch_thread.append(threading.get_ident())
        return run_batch_task(services, [e.to_payload() for e in entries])

    event.listen(services.db.engine, "before_cursor_execute", count)
    try:
        with ThreadPoolExecutor(1) as pool:
            outcome = pool.submit(batch)
            wait_for(lambda: order_count(services) == 4, 10, 0.01, "the free entries settled")
            go.set()
            outcomes = outcome.result(timeout=30)
    finally:
        event.remove(services.db.engine, "before_cursor_execute", count)
    holder.join(10)
    assert late == []  # it waited for the lock and found the entry gone: no query of its own
    assert outcomes == {str(e.order_id): DUPLICATE if e is other else CREATED for e in entries}
    assert sorted(db_orders(services, voucher)) == sorted((e.order_id, e.user_id) for e in entries)
    assert db_stock(services, voucher) == 45 and _stream_empty(services, settings, voucher)


def test_a_malformed_payload_in_a_batch_is_rejected_and_the_rest_settled(
    services, voucher, settings
):
    entries = _reserve(services, voucher, [1870, 1871])
    payloads = [entries[0].to_payload(), {"orderId": "12", "userId": "x"}, "junk"]
    payloads.append(entries[1].to_payload())
    outcomes = run_batch_task(services, payloads)
    assert outcomes == {
        str(entries[0].order_id): CREATED,
        "12": REJECTED,
        "#2": REJECTED,
        str(entries[1].order_id): CREATED,
    }
    assert sorted(u for _, u in db_orders(services, voucher)) == [1870, 1871]
    assert _stream_empty(services, settings, voucher)


# --- recovery ---------------------------------------------------------------------------------


def _recovery_services(settings, **changes) -> Services:  # type: ignore[no-untyped-def]
    return Services(settings.with_(**changes))


def _recover_now(settings) -> dict:  # type: ignore[no-untyped-def]
    """The beat job, treating every pending entry as stuck (claim idle 0)."""
    svc = _recovery_services(settings, order_claim_idle_ms=0)
    try:
        return run_recovery(svc)
    finally:
        svc.close()


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
        [voucher],
        now_ms=first_ms + settings.order_claim_idle_ms - 1,
    )
    assert report.picked_up == 0 and order_count(services) == 0
    report = recover(
        services.redis,
        settings,
        lambda e: settle_order(services, e),
        [voucher],
        now_ms=last_ms + settings.order_claim_idle_ms,
    )
    assert report.picked_up == 10 and report.settled == {CREATED: 10}
    assert order_count(services) == 10 and services.redis.xlen(stream_key(settings, voucher)) == 0
    assert (
        services.redis.xpending(stream_key(settings, voucher), settings.order_group)["pending"] == 0
    )


def test_recovery_claims_entries_stuck_with_a_dead_consumer(services, voucher, settings):
    entries = _reserve(services, voucher, range(200, 205))
    order_stream.ensure_group(services.redis, voucher_stream(settings, voucher))
    # a consumer read them and died before settling
    services.redis.xreadgroup(
        settings.order_group, "dead-one", {stream_key(settings, voucher): ">"}
    )
    # ... and a task settled one of them meanwhile (entry deleted, still in the PEL)
    assert settle_order(services, entries[0]) == CREATED
    assert (
        services.redis.xpending(stream_key(settings, voucher), settings.order_group)["pending"] == 4
    )
    services.redis.xgroup_createconsumer(stream_key(settings, voucher), settings.order_group, "x")
    report = _recover_now(settings)
    assert report["claimed"] == 4 and report["settled"] == {CREATED: 4}
    assert sorted(u for _, u in db_orders(services, voucher)) == list(range(200, 205))
    assert (
        services.redis.xpending(stream_key(settings, voucher), settings.order_group)["pending"] == 0
    )
    assert services.redis.xlen(stream_key(settings, voucher)) == 0


def test_recovery_clears_pel_ids_of_entries_already_settled(services, voucher, settings):
    """Redis 6.2 answers a deleted entry as nil, 7 leaves it out: both end acked."""
    entries = _reserve(services, voucher, range(300, 303))
    order_stream.ensure_group(services.redis, voucher_stream(settings, voucher))
    services.redis.xreadgroup(
        settings.order_group, "dead-one", {stream_key(settings, voucher): ">"}
    )
    for entry in entries:
        settle_order(services, entry)  # XACK clears them ... so re-add PEL ids by hand:
    ids = [e.stream_id for e in _reserve(services, voucher, range(310, 312))]
    services.redis.xreadgroup(
        settings.order_group, "dead-one", {stream_key(settings, voucher): ">"}
    )
    services.redis.xdel(stream_key(settings, voucher), *ids)  # deleted but pending: the odd case
    report = recover(
        services.redis,
        settings,
        lambda e: settle_order(services, e),
        [voucher],
        now_ms=int(time.time() * 1000),
    )
    # claim_idle_ms is 30 s: nothing idle enough yet
    assert report.acked_deleted == 0
    report = _recover_now(settings)
    assert report["acked_deleted"] == 2 and report["claimed"] == 0
    assert (
        services.redis.xpending(stream_key(settings, voucher), settings.order_group)["pending"] == 0
    )


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
        report = recover(services.redis, fast, failing, [voucher], max_failures=10)
        assert report.failed == 1 and report.dead_lettered == 0, (run, report)
        time.sleep(0.002)
    report = recover(services.redis, fast, failing, [voucher], max_failures=10)
    assert report.dead_lettered == 1 and report.failed == 0
    assert calls == [entry.stream_id] * 3
    dead = services.redis.xrange(dead_letter_key(settings, voucher))
    assert dead[0][1]["orderId"] == str(entry.order_id)
    assert dead[0][1]["deliveries"] == "3" and dead[0][1]["sourceId"] == entry.stream_id
    assert services.redis.xlen(stream_key(settings, voucher)) == 0
    assert (
        services.redis.xpending(stream_key(settings, voucher), settings.order_group)["pending"] == 0
    )


@pytest.mark.process
def test_entries_behind_three_busy_ones_are_settled_and_none_is_dead_lettered(
    services, voucher, settings, children
):
    """Three entries whose users' locks another process holds, ahead of seven healthy ones.

    All ten are in a dead worker's batch (the PEL). Before, every run claimed
    all ten (a delivery each), stopped after the three failures, and the
    fifth run dead-lettered all ten, the seven healthy ones never tried.
    """
    busy = _reserve(services, voucher, [950, 951, 952])
    _reserve(services, voucher, range(960, 967))
    locks = ",".join(f"lock:order:{e.user_id}" for e in busy)
    child = Child(settings, "hold", locks, "1000")
    children.append(child)
    child.expect("held")
    order_stream.claim_new(
        services.redis, voucher_stream(settings, voucher), 100
    )  # ... and the worker dies
    for _ in range(10):
        _recover_now(settings)
    assert sorted(u for _, u in db_orders(services, voucher)) == list(range(960, 967))
    assert services.redis.xlen(dead_letter_key(settings, voucher)) == 0
    assert _deliveries(services, settings, voucher) == {e.stream_id: 1 for e in busy}  # none spent
    child.kill()  # its locks expire after their lease (1 s)
    wait_for(lambda: _recover_now(settings)["settled"], 10, 0.5, "the busy entries settled")
    assert order_count(services) == 10 and _stream_empty(services, settings, voucher)
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0, audit.lines()


@pytest.mark.process
def test_three_failing_entries_ahead_of_20_healthy_ones_over_10_recovery_runs(
    client, services, voucher, settings, login_as, children
):
    """Each failing entry ends where it belongs; every healthy one becomes a row.

    At the head of a dead worker's batch: a user whose lock another process
    holds (outside the entry: it waits, uncharged), a voucher deleted from the
    database after its sale began, an order id that is already another user's
    order (both the entry's own: dead letters).
    """
    gone = create_seckill(client, login_as(1, role="admin"), stock=5)
    (taken,) = _reserve(services, voucher, [1099])
    assert settle_order(services, taken) == CREATED
    (busy,) = _reserve(services, voucher, [1100])
    _reserve(services, gone, [1101])
    with services.db.session() as session:
        session.execute(delete(SeckillVoucher).where(SeckillVoucher.voucher_id == gone))
        session.execute(delete(Voucher).where(Voucher.id == gone))
    clash = {"orderId": str(taken.order_id), "userId": "1102", "voucherId": str(voucher)}
    services.redis.xadd(stream_key(settings, voucher), clash)  # an order id issued twice
    healthy = range(1110, 1130)
    _reserve(services, voucher, healthy)
    child = Child(settings, "hold", f"lock:order:{busy.user_id}", "1000")
    children.append(child)
    child.expect("held")
    order_stream.claim_new(
        services.redis, voucher_stream(settings, voucher), 100
    )  # ... and the worker dies
    for _ in range(10):
        _recover_now(settings)
    assert sorted(u for _, u in db_orders(services, voucher)) == [1099, *healthy]
    dead = [
        (v, f["userId"], f["reason"].split(":")[0])
        for v in (voucher, gone)
        for _, f in services.redis.xrange(dead_letter_key(settings, v))
    ]
    assert sorted(dead) == [  # each beside its voucher's stream (the deleted one's too)
        (voucher, "1102", "order id belongs to another order"),
        (gone, "1101", "unknown voucher"),
    ]
    assert _deliveries(services, settings, voucher) == {busy.stream_id: 1}  # waiting, uncharged
    (audit,) = verify_orders(services, voucher).vouchers
    assert (audit.lost, audit.phantom, audit.duplicates, audit.unsettled) == (0, 0, 0, 1)
    assert audit.dead_letters == 1 and all("dead-letter" in p for p in audit.problems)
    child.kill()  # its lock expires after its lease (1 s)
    wait_for(lambda: _recover_now(settings)["settled"], 10, 0.5, "the busy entry settled")
    (audit,) = verify_orders(services, voucher).vouchers
    assert audit.unsettled == 0 and all("dead-letter" in p for p in audit.problems)
    assert order_count(services) == 22 and services.redis.xlen(stream_key(settings, voucher)) == 0


def test_database_errors_during_recovery_never_spend_an_entry_s_deliveries(
    services, voucher, settings
):
    """The database goes away after the job's check: recovery fails, charges nobody, stops."""
    entries = _reserve(services, voucher, range(1200, 1205))
    order_stream.claim_new(
        services.redis, voucher_stream(settings, voucher), 100
    )  # ... and the worker dies
    down = _recovery_services(
        settings,
        order_claim_idle_ms=0,
        database_url="mysql+pymysql://nobody@127.0.0.1:1/none?connect_timeout=1",
    )
    try:
        for _ in range(10):
            report = recover_orders(down)
            assert report.aborted and report.failed == 3 and report.dead_lettered == 0
    finally:
        down.close()
    assert _deliveries(services, settings, voucher) == {e.stream_id: 1 for e in entries}
    assert _recover_now(settings)["settled"] == {CREATED: 5}
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0, audit.lines()


def _deliveries(services, settings, voucher: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Stream id -> delivery count of every entry in the PEL."""
    pending = services.redis.xpending_range(
        stream_key(settings, voucher), settings.order_group, min="-", max="+", count=1000
    )
    return {p["message_id"]: int(p["times_delivered"]) for p in pending}


def test_malformed_stream_entries_go_to_the_dead_letter_stream(services, voucher, settings):
    order_stream.ensure_group(services.redis, voucher_stream(settings, voucher))
    bad = services.redis.xadd(stream_key(settings, voucher), {"orderId": "oops", "userId": "1"})
    fast = settings.with_(order_claim_idle_ms=0)
    time.sleep(0.002)
    report = recover(services.redis, fast, lambda e: settle_order(services, e), [voucher])
    assert report.dead_lettered == 1
    dead = services.redis.xrange(dead_letter_key(settings, voucher))
    assert dead[0][1]["sourceId"] == bad and dead[0][1]["reason"].startswith("malformed")


def test_repeated_failures_abort_the_run_without_touching_the_rest(services, voucher, settings):
    _reserve(services, voucher, range(500, 510))
    fast = settings.with_(order_claim_idle_ms=0)
    time.sleep(0.002)

    def failing(e: OrderEntry) -> str:
        raise ConnectionError("database down")

    report = recover(services.redis, fast, failing, [voucher], max_failures=3)
    assert report.aborted and report.failed == 3
    # the untried ones were delivered once (read) but not counted as attempts beyond that
    report = recover(services.redis, fast, lambda e: settle_order(services, e), [voucher])
    assert report.settled == {CREATED: 10} and order_count(services) == 10


def test_recovery_settles_a_never_dispatched_backlog_in_batches(services, voucher, settings):
    """A long broker outage leaves everything to recovery: group commit, not 1 order a time."""
    gate = SeckillGate(services.redis, settings)
    users = range(5000, 5040)
    assert all(r.ok for r in gate.reserve_many(voucher, list(users)))
    commits: list[int] = []

    def count(conn) -> None:  # type: ignore[no-untyped-def]
        commits.append(1)

    event.listen(services.db.engine, "commit", count)
    try:
        report = _recover_now(settings)
    finally:
        event.remove(services.db.engine, "commit", count)
    assert report["picked_up"] == 40 and report["settled"] == {CREATED: 40}
    assert len(commits) <= 2  # one transaction for the batch (one read on SQLite)
    assert sorted(u for _, u in db_orders(services, voucher)) == list(users)
    assert db_stock(services, voucher) == 10 and _stream_empty(services, settings, voucher)


def test_a_failing_batch_counts_once_toward_the_abort_and_stays_pending(
    services, voucher, settings
):
    _reserve(services, voucher, range(5100, 5105))
    fast = settings.with_(order_claim_idle_ms=0)
    time.sleep(0.002)

    def failing_many(entries: list[OrderEntry]) -> dict:
        raise ConnectionError("database down")

    report = recover(
        services.redis,
        fast,
        lambda e: settle_order(services, e),
        [voucher],
        max_failures=2,
        settle_many=failing_many,
    )
    assert report.failed == 5 and report.picked_up == 5 and not report.aborted
    assert order_count(services) == 0
    pending = services.redis.xpending(stream_key(settings, voucher), settings.order_group)[
        "pending"
    ]
    assert pending == 5  # read once, in the PEL: a later run claims them as stuck
    report = recover(services.redis, fast, lambda e: settle_order(services, e), [voucher])
    assert report.claimed == 5 and report.settled == {CREATED: 5}
    assert order_count(services) == 5 and _stream_empty(services, settings, voucher)


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
    assert services.redis.xlen(stream_key(settings, voucher)) == 1
    group = services.redis.xinfo_groups(stream_key(settings, voucher))[0]
    assert group["pending"] == 0  # no delivery spent


@pytest.mark.redis_cluster(single="WritesReset kills the clients of one server")
@pytest.mark.process
def test_redis_failing_a_recovery_after_its_commit_leaves_no_lock_alive(
    services, voucher, settings, children
):
    """Redis resets the recovery's connections from an order's COMMIT to the end of the run.

    The row is committed, its acknowledgement and both lock releases (the
    user's and ``lock:order-recovery``) fail: another process gets both locks
    within the lease + 1 s, and the next run settles the entry once.
    """
    (entry,) = _reserve(services, voucher, [900])
    lease_s = 1.0
    svc = _recovery_services(
        settings, order_claim_idle_ms=0, order_lock_lease_ms=int(lease_s * 1000)
    )
    name_connections(svc.redis, "recovery")
    locks = [RECOVERY_LOCK, f"lock:order:{entry.user_id}"]
    child = Child(settings, "acquire", "rlock", ",".join(locks), "20", "go:locks")
    children.append(child)
    child.expect("waiting")
    reset = WritesReset(settings.redis_url, "recovery")
    event.listen(svc.db.engine, "commit", lambda conn: reset.start())
    try:
        report = run_recovery(svc)
    finally:
        reset.stop()
        svc.close()
    failed_at = time.time()
    assert report["failed"] == 1 and report["settled"] == {}, report
    assert reset.killed >= 3  # the lock release, the acknowledgement, the recovery lock
    assert all(services.redis.exists(name) for name in locks)  # not released: must expire
    assert order_count(services) == 1 and services.redis.xlen(stream_key(settings, voucher)) == 1
    services.redis.rpush("go:locks", "1")
    line = child.lines.get(timeout=30)
    assert line.startswith("acquired "), line
    assert float(line.split()[1]) - failed_at <= lease_s + 1
    child.kill()
    assert all(RLock(services.redis, name).force_release() for name in locks)
    assert _recover_now(settings)["settled"] == {DUPLICATE: 1}
    assert db_orders(services, voucher) == [(entry.order_id, entry.user_id)]
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0, audit.lines()


def test_task_and_recovery_racing_on_many_entries_give_one_row_each(services, voucher, settings):
    entries = _reserve(services, voucher, range(700, 740))
    created_in_batches = _batch_settled(CREATED)
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
    created = (
        outcomes.count(CREATED)
        + report["settled"].get(CREATED, 0)
        + _batch_settled(CREATED)
        - created_in_batches
    )
    assert created == 40  # each order created exactly once, whoever did it
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
    services.redis.xdel(stream_key(settings, voucher), entries[1].stream_id)
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
    services.redis.delete(f"seckill:order:{{{voucher}}}", f"seckill:stock:{{{voucher}}}")
    with services.db.session() as session:
        session.query(VoucherOrder).delete()
    fresh = create_seckill(app.test_client(), _admin(services), stock=3)
    _reserve(services, fresh, [1])
    assert runner.invoke(args=["orders", "verify", str(fresh)]).exit_code == 0
    assert runner.invoke(args=["orders", "verify", str(fresh), "--drained"]).exit_code == 1


def _admin(services) -> dict:  # type: ignore[no-untyped-def]
    from support.sessions import session_for

    return session_for(services, 1, "admin")


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
