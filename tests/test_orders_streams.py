"""One orders stream per voucher (cache/order_stream.py, cache/stream_vouchers.py).

Each voucher's reservations, consumer group and dead letters live in its slot
(``stream.orders:{42}``, ``stream.orders.dead:{42}``), so the settle, the claims,
recovery, the gauges and the audit read many streams. The entries here are
written as the gate writes them (XADD of orderId, userId, voucherId) without the
gate, so that the module runs on a real Redis Cluster too; the gate's own tests
are test_seckill_gate.py. The upgrade from the single ``stream.orders`` of
earlier versions is tested on a single Redis, the only place it can exist.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from redis.crc import key_slot
from sqlalchemy import event, update
from support.seckill import add_seckill_voucher, db_orders, db_stock, order_count

from beat.order_jobs import run_recovery
from cache import order_stream, stream_vouchers
from cache.order_stream import OrderEntry, Stream, voucher_stream
from cache.reconcile import Reconciler, snapshot
from cache.seckill import load_voucher, order_id_key, order_set_key, stock_key
from models.entities import SeckillVoucher
from services import Services
from settings import Settings
from tasks.orders import (
    CREATED,
    DUPLICATE,
    OVERSELL,
    UNKNOWN_VOUCHER,
    run_batch_task,
    run_order_task,
)
from web.order_replay import REPLAYED, replay_dead_letters
from web.orders import verify_orders

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

_next_order = iter(range(10_000, 10**9))


def _voucher(services, stock: int = 10, ends_in: timedelta = timedelta(days=1)) -> int:  # type: ignore[no-untyped-def]
    """A seckill voucher in the database, loaded into Redis as its creation loads it."""
    voucher = add_seckill_voucher(services, stock, ends_in)
    with services.db.session() as session:
        row = session.get(SeckillVoucher, voucher)
        begin, end = row.begin_time, row.end_time
    load_voucher(services.redis, voucher, stock, begin, end)
    stream_vouchers.prepare(services.redis, services.settings, [voucher])
    return voucher


def _add(services, stream: Stream, user: int, stream_id: str = "*") -> OrderEntry:  # type: ignore[no-untyped-def]
    """One reservation in ``stream``: what the gate's script writes (entry, stock, buyer, id)."""
    voucher, order_id = stream.voucher_id or 0, next(_next_order)
    fields = {"orderId": str(order_id), "userId": str(user), "voucherId": str(voucher)}
    sid = services.redis.xadd(stream.key, fields, id=stream_id)
    pipe = services.redis.pipeline(transaction=True)  # the voucher's slot
    pipe.decr(stock_key(voucher))
    pipe.sadd(order_set_key(voucher), str(user))
    pipe.hset(order_id_key(voucher), str(user), str(order_id))
    pipe.execute()
    return OrderEntry(order_id, user, voucher, sid)


def _empty(services, stream: Stream) -> bool:  # type: ignore[no-untyped-def]
    (reading,) = order_stream.read_streams(services.redis, [stream])
    return reading.length == 0 and reading.pending == 0


def _recover_now(settings: Settings) -> dict:
    """The beat job, treating every entry as old enough (claim idle 0)."""
    svc = Services(settings.with_(order_claim_idle_ms=0))
    try:
        time.sleep(0.002)
        return run_recovery(svc)
    finally:
        svc.close()


def test_a_voucher_s_stream_and_dead_letters_are_in_its_slot():
    settings = Settings()
    assert order_stream.stream_key(settings, 42) == "stream.orders:{42}"
    assert order_stream.dead_letter_key(settings, 42) == "stream.orders.dead:{42}"
    slots = {key_slot(k.encode()) for k in (*_keys(settings, 42), stock_key(42))}
    assert slots == {key_slot(b"42")}
    assert key_slot(order_stream.stream_key(settings, 43).encode()) != key_slot(b"42")


def _keys(settings: Settings, voucher_id: int) -> tuple[str, str]:
    stream = voucher_stream(settings, voucher_id)
    return stream.key, stream.dead


def test_a_batch_task_of_two_vouchers_claims_from_both_and_commits_once(services, settings):
    """Stream ids are unique per stream only: the same ids in both streams are two orders."""
    first, second = (_voucher(services, stock=20) for _ in range(2))
    streams = [voucher_stream(settings, v) for v in (first, second)]
    base = int(time.time() * 1000)
    entries = [
        _add(services, stream, 100 + n, f"{base}-{n}") for stream in streams for n in range(5)
    ]
    assert entries[0].stream_id == entries[5].stream_id
    commits: list[int] = []

    def count(conn) -> None:  # type: ignore[no-untyped-def]
        commits.append(1)

    event.listen(services.db.engine, "commit", count)
    try:
        outcomes = run_batch_task(services, [e.to_payload() for e in entries])
    finally:
        event.remove(services.db.engine, "commit", count)
    assert outcomes == {str(e.order_id): CREATED for e in entries}
    assert len(commits) <= 2  # one transaction for both vouchers (one read on SQLite)
    for voucher, stream in zip((first, second), streams, strict=True):
        assert sorted(u for _, u in db_orders(services, voucher)) == list(range(100, 105))
        assert db_stock(services, voucher) == 15 and _empty(services, stream)
    again = run_batch_task(services, [e.to_payload() for e in entries])
    assert again == {str(e.order_id): DUPLICATE for e in entries}


def test_still_present_tells_which_entries_of_several_streams_are_unsettled(services, settings):
    """The same id in two streams is two entries; a server that forgot the script reloads it."""
    first, second = (_voucher(services, stock=20) for _ in range(2))
    streams = [voucher_stream(settings, v) for v in (first, second)]
    base = int(time.time() * 1000)
    for stream in streams:
        for n in range(3):
            _add(services, stream, 200 + n, f"{base}-{n}")
    services.redis.xdel(streams[0].key, f"{base}-1")  # settled
    services.redis.xdel(streams[1].key, f"{base}-0", f"{base}-2")
    refs = [(stream.key, f"{base}-{n}") for stream in streams for n in range(3)]
    refs.append((streams[0].key, f"{base}-9"))  # never there
    expected = {refs[0], refs[2], refs[4]}
    assert order_stream.still_present(services.redis, refs) == expected
    services.redis.script_flush()  # as after a restart: the server knows no script
    assert order_stream.still_present(services.redis, refs) == expected


def test_a_batch_task_settles_after_redis_forgot_its_scripts(services, settings):
    """NOSCRIPT from the claim's presence check and from the batch's locks: loaded again."""
    voucher = _voucher(services, stock=20)
    stream = voucher_stream(settings, voucher)
    entries = [_add(services, stream, 300 + n) for n in range(4)]
    services.redis.script_flush()
    outcomes = run_batch_task(services, [e.to_payload() for e in entries])
    assert outcomes == {str(e.order_id): CREATED for e in entries}
    assert db_stock(services, voucher) == 16 and _empty(services, stream)
    assert not any(services.redis.exists(f"lock:order:{300 + n}") for n in range(4))


def test_a_task_claims_only_from_its_own_voucher_s_stream(services, settings):
    mine, other = (_voucher(services) for _ in range(2))
    own = _add(services, voucher_stream(settings, mine), 7)
    _add(services, voucher_stream(settings, other), 8)
    assert run_order_task(services, own.to_payload()) == CREATED
    assert order_count(services) == 1
    assert services.redis.xlen(order_stream.stream_key(settings, other)) == 1


def test_recovery_settles_the_backlog_of_every_voucher_stream(services, settings):
    quiet, stuck, lost = (_voucher(services) for _ in range(3))
    held = [_add(services, voucher_stream(settings, stuck), u) for u in (1, 2, 3)]
    order_stream.claim_new(services.redis, voucher_stream(settings, stuck), 100)  # ... dies
    undispatched = [_add(services, voucher_stream(settings, lost), u) for u in (1, 2)]
    report = _recover_now(settings)
    assert report["claimed"] == 3 and report["picked_up"] == 2
    assert report["settled"] == {CREATED: 5} and sorted(report["behind"]) == [stuck, lost]
    for voucher, entries in ((stuck, held), (lost, undispatched)):
        rows = sorted(db_orders(services, voucher))
        assert rows == sorted((e.order_id, e.user_id) for e in entries)
        assert _empty(services, voucher_stream(settings, voucher))
    audit = verify_orders(services)
    assert audit.ok and audit.unsettled == 0 and audit.stream_length == 0, audit.lines()


def test_an_entry_of_another_voucher_in_a_stream_is_dead_lettered_there(services, settings):
    """Its settle would acknowledge it in the other voucher's stream, never in this one."""
    voucher, other = (_voucher(services) for _ in range(2))
    stream = voucher_stream(settings, voucher)
    services.redis.xadd(stream.key, {"orderId": "77", "userId": "1", "voucherId": str(other)})
    assert _recover_now(settings)["dead_lettered"] == 1
    ((_, dead),) = services.redis.xrange(stream.dead)
    assert dead["reason"] == f"malformed: voucherId {other} in {stream.key}"
    assert _empty(services, stream) and order_count(services) == 0


def test_a_sale_ended_long_ago_is_read_by_the_sweep_and_while_it_lingers(services, settings):
    """Recent vouchers every run; an old one when a sweep is due, or marked (replay does)."""
    horizon = timedelta(seconds=settings.order_stream_horizon_s)
    old = _voucher(services, ends_in=-(horizon + timedelta(hours=1)))
    _voucher(services, ends_in=-timedelta(hours=1))  # recent: read every run
    services.redis.set(stream_vouchers.swept_key(settings), "1")  # swept a moment ago
    entry = _add(services, voucher_stream(settings, old), 5)
    report = _recover_now(settings)
    assert report["streams"] == 1 + _legacy(services) and order_count(services) == 0
    stream_vouchers.linger(services.redis, settings, [old])
    report = _recover_now(settings)  # read: it lingers, and a sweep is due again
    assert report["settled"] == {CREATED: 1}
    assert db_orders(services, old) == [(entry.order_id, entry.user_id)]
    assert stream_vouchers.lingering(services.redis, settings) == {old}
    assert _recover_now(settings)["streams"] == 2 + _legacy(services)
    assert stream_vouchers.lingering(services.redis, settings) == set()  # read empty: dropped
    services.redis.delete(stream_vouchers.swept_key(settings))
    _add(services, voucher_stream(settings, old), 6)
    services.redis.xadd(voucher_stream(settings, old).dead, {"orderId": "1"})
    report = _recover_now(settings)  # the sweep finds it, and keeps it while it has a dead letter
    assert report["settled"] == {CREATED: 1} and report["behind"] == [old]
    assert stream_vouchers.lingering(services.redis, settings) == {old}
    assert report["streams"] == 2 + _legacy(services)
    report = _recover_now(settings)  # no sweep due: the recent one and the lingering one
    assert report["streams"] == 2 + _legacy(services)


def test_a_voucher_deleted_from_the_database_is_swept_from_the_registry(services, settings):
    gone = _voucher(services)
    _add(services, voucher_stream(settings, gone), 5)
    with services.db.session() as session:
        session.query(SeckillVoucher).filter_by(voucher_id=gone).delete()
    report = _recover_now(settings)  # a fresh Redis: the first run sweeps
    assert report["settled"] == {UNKNOWN_VOUCHER: 1} and report["behind"] == [gone]
    ((_, dead),) = services.redis.xrange(voucher_stream(settings, gone).dead)
    assert dead["reason"].startswith("unknown voucher")


def test_replay_marks_the_voucher_so_recovery_reads_its_stream(services, settings):
    horizon = timedelta(seconds=settings.order_stream_horizon_s)
    old = _voucher(services, ends_in=-(horizon + timedelta(days=1)))
    stream = voucher_stream(settings, old)
    entry = _add(services, stream, 9)
    fields = {k: str(v) for k, v in entry.to_payload().items() if k != "streamId"}
    order_stream.dead_letter(services.redis, stream, entry.stream_id, fields, "given up")
    services.redis.set(stream_vouchers.swept_key(settings), "1")
    (result,) = replay_dead_letters(services, None)
    assert result.action == REPLAYED and services.redis.xlen(stream.key) == 1
    assert stream_vouchers.lingering(services.redis, settings) == {old}
    assert _recover_now(settings)["settled"] == {CREATED: 1}
    assert db_orders(services, old) == [(entry.order_id, entry.user_id)]


def _legacy(services) -> int:  # type: ignore[no-untyped-def]
    return len(order_stream.legacy_of(services.redis, services.settings))


# --- the upgrade: the single stream of earlier versions ---------------------------------------


@pytest.mark.redis_cluster(single="the legacy single stream exists on a single Redis only")
def test_recovery_drains_the_legacy_stream_then_deletes_it(services, settings):
    voucher = _voucher(services, stock=6)
    legacy = order_stream.legacy_stream(settings)
    old_gate = [_add(services, _as_legacy(legacy, voucher), u) for u in (1, 2, 3, 4, 5)]
    order_stream.ensure_group(services.redis, legacy)
    # an old worker read two of them and died; the other three were never dispatched
    services.redis.xreadgroup(legacy.group, "old-worker", {legacy.key: ">"}, count=2)
    new_gate = _add(services, voucher_stream(settings, voucher), 6)
    assert verify_orders(services, voucher).unsettled == 6
    with services.db.session() as session:  # one more reservation than stock: an oversell
        session.execute(
            update(SeckillVoucher).where(SeckillVoucher.voucher_id == voucher).values(stock=5)
        )
    report = _recover_now(settings)
    assert report["settled"] == {CREATED: 5, OVERSELL: 1}
    assert report["legacy_dropped"] is True and not services.redis.exists(legacy.key)
    assert order_count(services) == 5
    ((_, dead),) = services.redis.xrange(legacy.dead)  # beside the stream it came from
    assert dead["reason"].startswith("oversell")
    # fixed, then replayed: back into its voucher's stream, and settled from there
    with services.db.session() as session:
        session.execute(
            update(SeckillVoucher).where(SeckillVoucher.voucher_id == voucher).values(stock=1)
        )
    (result,) = replay_dead_letters(services, None)
    assert result.action == REPLAYED and services.redis.xlen(legacy.dead) == 0
    assert _recover_now(settings)["settled"] == {CREATED: 1}
    rows = sorted(db_orders(services, voucher))
    assert rows == sorted((e.order_id, e.user_id) for e in [*old_gate, new_gate])
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0 and audit.dead_letters == 0, audit.lines()


def _as_legacy(legacy: Stream, voucher: int) -> Stream:
    """The legacy stream, writing entries of ``voucher`` (as the old gate did)."""
    return Stream(legacy.key, legacy.dead, legacy.group, voucher)


@pytest.mark.redis_cluster(single="the legacy single stream exists on a single Redis only")
def test_the_legacy_stream_is_deleted_only_while_empty(services, settings):
    legacy = order_stream.legacy_stream(settings)
    voucher = _voucher(services)
    _add(services, _as_legacy(legacy, voucher), 1)  # an old web process still selling
    assert order_stream.drop_if_empty(services.redis, legacy) is False
    assert services.redis.xlen(legacy.key) == 1
    assert _recover_now(settings)["legacy_dropped"] is True
    assert order_stream.drop_if_empty(services.redis, legacy) is False  # gone already
    assert order_count(services) == 1


def test_reconciliation_reads_each_voucher_s_stream_in_its_snapshot(services, settings):
    """Buyers and stock rebuilt from each voucher's own unsettled entries (two slots)."""
    first, second = (_voucher(services, stock=10) for _ in range(2))
    waiting = {
        v: [_add(services, voucher_stream(settings, v), u) for u in range(1, n + 1)]
        for v, n in ((first, 3), (second, 2))
    }
    for v in (first, second):  # an older copy of Redis: none of this voucher's sales
        services.redis.set(stock_key(v), 10)
        services.redis.delete(order_set_key(v), order_id_key(v))
    report = Reconciler(services.redis, settings, services.db).run()
    repairs = {r.voucher_id: r for r in report.vouchers}
    assert (repairs[first].stock_after, repairs[first].buyers_added) == (7, 3)
    assert (repairs[second].stock_after, repairs[second].buyers_added) == (8, 2)
    for v, entries in waiting.items():
        issued = services.redis.hgetall(order_id_key(v))
        assert issued == {str(e.user_id): str(e.order_id) for e in entries}


def test_the_reconciliation_snapshot_reads_the_stock_and_the_stream_s_tail_at_once(
    services, settings
):
    """One MULTI in the voucher's slot (stock, buyers, ids, tail); parsed on a cluster too."""
    voucher = _voucher(services, stock=10)
    stream = voucher_stream(settings, voucher)
    first, second = (_add(services, stream, u) for u in (1, 2))
    snap = snapshot(services.redis, voucher, {stream.key: None})
    assert snap.stock == "8" and snap.buyers == {"1", "2"}
    assert snap.issued == {"1": str(first.order_id), "2": str(second.order_id)}
    assert [OrderEntry.from_fields(f, sid) for sid, f in snap.tail] == [first, second]
    snap = snapshot(services.redis, voucher, {stream.key: first.stream_id})
    assert [sid for sid, _ in snap.tail] == [second.stream_id]
