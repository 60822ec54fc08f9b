"""``flask orders replay``: dead letters back to the orders Stream, once, atomically per entry.

The dead letters are made the way production makes them (an oversell the
database refused, a malformed entry, recovery giving up), then replayed with
the real command, settled by the real settle code, and audited.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import update
from support.env import ROOT, process_env
from support.seckill import (
    add_seckill_voucher,
    add_shop,
    create_seckill,
    db_orders,
    db_stock,
    order_count,
    order_streams,
    stream_entries,
)

from beat.order_jobs import run_recovery
from cache import order_stream
from cache.order_stream import OrderEntry
from cache.seckill import SeckillGate
from models.entities import SeckillVoucher
from services import Services
from tasks.orders import CREATED, persist_order, run_order_task
from web.order_replay import REPLAYED, UNKNOWN, replay_dead_letters
from web.orders import verify_orders

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


@pytest.fixture
def admin(services, login_as) -> dict:
    add_shop(services)
    return login_as(1, role="admin")


def _reserve(services, voucher_id: int, users) -> list[OrderEntry]:  # type: ignore[no-untyped-def]
    gate = SeckillGate(services.redis, services.settings)
    results = gate.reserve_many(voucher_id, list(users))
    assert all(r.ok for r in results), results
    return [
        OrderEntry(r.order_id, u, voucher_id, r.stream_id)
        for u, r in zip(users, results, strict=True)
    ]


def _give_up_on(services, entries: list[OrderEntry]) -> None:
    """Dead-letter entries as recovery does after HMDP_ORDER_MAX_DELIVERIES failures."""
    for entry in entries:
        fields = {k: str(v) for k, v in entry.to_payload().items() if k != "streamId"}
        stream = order_stream.voucher_stream(services.settings, entry.voucher_id)
        order_stream.dead_letter(services.redis, stream, entry.stream_id, fields, "not settled", 5)


def _dead(services) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Every voucher's dead letters by id (one voucher per test: the ids are unique)."""
    return {sid: f for s in order_streams(services) for sid, f in services.redis.xrange(s.dead)}


def _stream_orders(services) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["orderId"] for _, f in stream_entries(services)]


def _recover_all(settings) -> dict:  # type: ignore[no-untyped-def]
    svc = Services(settings.with_(order_claim_idle_ms=0))
    try:
        return run_recovery(svc)
    finally:
        svc.close()


def test_replay_after_the_cause_is_fixed_settles_each_order_once(
    app, client, services, settings, admin
):
    voucher = create_seckill(client, admin, stock=50)
    entries = _reserve(services, voucher, range(1300, 1304))
    with services.db.session() as session:  # an operator's mistake: the database stock cut to 1
        session.execute(
            update(SeckillVoucher).where(SeckillVoucher.voucher_id == voucher).values(stock=1)
        )
    assert run_order_task(services, entries[0].to_payload()) == CREATED
    dead = _dead(services)
    assert len(dead) == 3 and {f["reason"] for f in dead.values()} == {
        "oversell: no database stock left"
    }
    with services.db.session() as session:  # ... fixed: 50 minus the one row
        session.execute(
            update(SeckillVoucher).where(SeckillVoucher.voucher_id == voucher).values(stock=49)
        )
    first, second, third = sorted(dead, key=lambda d: dead[d]["userId"])
    # the original task of one of them still ran (one order per task) and made its row
    orphan = OrderEntry.from_fields(dead[third], None)
    assert persist_order(services.db, orphan) == CREATED

    runner = app.test_cli_runner()
    named = [first, dead[second]["sourceId"], third]  # by dead-letter id or by source id
    result = runner.invoke(args=["orders", "replay", *named])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{first}: replayed: order {dead[first]['orderId']}")
    assert lines[1].startswith(f"{second}: replayed: ")
    assert lines[2] == (
        f"{third}: removed: order {orphan.order_id} (user {orphan.user_id}, voucher {voucher})"
        " is a row already"
    )
    assert lines[3] == "replayed 2, removed 1, unknown 0, kept 0; 2 order tasks sent"
    assert _dead(services) == {}
    assert sorted(_stream_orders(services)) == sorted(
        [dead[first]["orderId"], dead[second]["orderId"]]
    )

    again = runner.invoke(args=["orders", "replay", first])  # replayed already: nothing twice
    assert again.exit_code == 1 and f"{first}: unknown: " in again.output
    assert len(_stream_orders(services)) == 2

    assert _recover_all(settings)["settled"] == {CREATED: 2}
    assert sorted(db_orders(services, voucher)) == sorted((e.order_id, e.user_id) for e in entries)
    assert db_stock(services, voucher) == 46
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0 and audit.dead_letters == 0, audit.lines()


def test_replay_keeps_malformed_dead_letters_and_refuses_bad_usage(app, services, settings):
    stream = order_stream.voucher_stream(settings, add_seckill_voucher(services))
    order_stream.ensure_group(services.redis, stream)
    services.redis.xadd(stream.key, {"orderId": "oops", "userId": "1"})
    time.sleep(0.002)
    assert _recover_all(settings)["dead_lettered"] == 1
    (bad,) = _dead(services)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["orders", "replay", "--all"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith(f"{bad}: kept: malformed")
    assert list(_dead(services)) == [bad] and services.redis.xlen(stream.key) == 0
    result = runner.invoke(args=["orders", "replay", "1-1", "not-an-id"])
    assert result.exit_code == 1
    assert result.output.splitlines()[:2] == [
        "1-1: unknown: not a dead letter of any orders stream",
        "not-an-id: unknown: not a dead letter of any orders stream",
    ]
    for args in ([], ["--all", bad]):
        result = runner.invoke(args=["orders", "replay", *args])
        assert result.exit_code == 2 and "ENTRY_ID" in result.output
    assert list(_dead(services)) == [bad]


def test_concurrent_replays_move_each_dead_letter_once(client, services, settings, admin):
    voucher = create_seckill(client, admin, stock=50)
    entries = _reserve(services, voucher, range(1400, 1420))
    _give_up_on(services, entries)
    start = threading.Barrier(3)
    results: list = []

    def replay() -> None:
        start.wait()
        results.extend(replay_dead_letters(services, None))

    threads = [threading.Thread(target=replay) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r.action for r in results if r.action != UNKNOWN) == [REPLAYED] * 20
    assert sorted(_stream_orders(services)) == sorted(str(e.order_id) for e in entries)
    assert _dead(services) == {}
    assert _recover_all(settings)["settled"] == {CREATED: 20}
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0, audit.lines()


@pytest.mark.process
def test_a_replay_killed_midway_leaves_each_entry_in_exactly_one_place(
    app, client, services, settings, admin
):
    total = 500
    voucher = create_seckill(client, admin, stock=total)
    entries = _reserve(services, voucher, range(2000, 2000 + total))
    _give_up_on(services, entries)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "web", "orders", "replay", "--all"],
        cwd=ROOT,
        env=process_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stream, admin_redis = order_stream.stream_key(settings, voucher), services.redis
    try:
        deadline = time.monotonic() + 60
        while admin_redis.xlen(stream) < 5:  # it is replaying: stop it in the middle
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the replay did not start"
        admin_redis.client_pause(10_000, all=False)  # its next script waits in Redis ...
        proc.send_signal(signal.SIGKILL)  # ... and the process dies
        proc.wait(10)
    finally:
        admin_redis.client_unpause()
        if proc.poll() is None:
            proc.kill()
    replayed = _stream_orders(services)
    left = [f["orderId"] for f in _dead(services).values()]
    assert 5 <= len(replayed) < total, "not killed midway"
    assert sorted(replayed + left) == sorted(str(e.order_id) for e in entries)  # each once

    result = app.test_cli_runner().invoke(args=["orders", "replay", "--all"])
    assert result.exit_code == 0, result.output
    assert _dead(services) == {} and len(_stream_orders(services)) == total
    assert _recover_all(settings)["settled"] == {CREATED: total}
    assert order_count(services) == total
    audit = verify_orders(services, voucher)
    assert audit.ok and audit.unsettled == 0 and audit.dead_letters == 0, audit.lines()
