"""The seckill order route, ``flask orders verify`` and ``flask orders replay``.

``POST /voucher-order/seckill/<id>`` answers at once from Redis: ONE call to
``lua/seckill.lua`` decides and reserves (see :mod:`cache.seckill`), then the
order task is dispatched by name. The reservation is already durable in the
orders Stream, so a failed dispatch (broker down) is logged and counted but the
answer is still a success: beat's recovery persists it from the Stream. The
dispatch happens off the request path (:mod:`web.order_dispatch`).

data = the order id as a decimal STRING: ids are 64-bit (cache/ids.py) and a
JSON number above 2^53 loses digits in JavaScript.

``flask orders verify [VOUCHER_ID]`` (and :func:`verify_orders` for scripts)
audits Redis against the database: stock + buyers must match on both sides,
every reservation must be a row, a pending Stream entry or a dead letter, no
row may exist without a reservation, every row's id must be the id the gate
issued to its buyer, and every id answered 200 that will never be a row (a
drift event, a lost entry) is listed with what it means for the client.
``flask orders reconcile [VOUCHER_ID]`` repairs the gate state Redis lost
(:mod:`cache.reconcile`; beat runs it too). ``flask orders replay`` moves dead
letters back to the Stream (:mod:`web.order_replay`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Annotated

import click
from celery import Celery
from flask import Blueprint, Flask, Response, current_app
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from cache import order_stream, stream_vouchers
from cache.order_stream import MalformedEntry, OrderEntry
from cache.reconcile import MISSING, DriftRecord, Reconciler, drift_records
from cache.seckill import (
    DUPLICATE,
    ENDED,
    EXHAUSTED,
    NOT_STARTED,
    OK,
    SOLD_OUT,
    UNCONFIRMED,
    UNKNOWN,
    GateResult,
    MissingVouchers,
    RedisSnapshot,
    SeckillGate,
    redis_snapshot,
)
from cache.stream_vouchers import all_vouchers
from metrics import ORDER_DISPATCH_FAILURES, SECKILL_OUTCOMES
from models.entities import MAX_ID, SeckillVoucher, VoucherOrder
from services import Services

from .auth import login_required, require_user
from .contract import contract
from .envelope import MIMETYPE, ApiError, envelope, fail_bytes, ok_bytes
from .order_dispatch import CelerySender, OrderDispatcher
from .order_replay import dispatch_replayed, replay_dead_letters, summary
from .runtime import services
from .schemas import Id, Path

log = logging.getLogger(__name__)

bp = Blueprint("orders", __name__, cli_group="orders")

# By name: the web tier never imports task code (tests check it matches).
ORDER_TASK = "tasks.orders.create_voucher_order"
_EXTENSION = "hmdp_seckill"
LOAD_WAIT_SECONDS = 10.0  # a request waits this long for another's load of a voucher
_REFUSALS = {
    SOLD_OUT: "sold out",
    DUPLICATE: "already ordered",
    NOT_STARTED: "not started",
    ENDED: "ended",
}
_OUTCOMES = {
    name: SECKILL_OUTCOMES.labels(outcome=name)
    for name in (OK, SOLD_OUT, DUPLICATE, NOT_STARTED, ENDED, UNKNOWN, EXHAUSTED, UNCONFIRMED)
}


def _count_dispatch_failures(count: int, reason: BaseException | str) -> None:
    ORDER_DISPATCH_FAILURES.inc(count)
    log.debug("%d order dispatches failed or dropped: %s", count, reason)


class SeckillState:
    """This app's gate, dispatcher and memory of missing vouchers (built on first use)."""

    def __init__(self, svc: Services, celery_app: Celery):
        self.services = svc
        self.gate = SeckillGate(svc.redis, svc.settings)
        self.missing = MissingVouchers()
        self.reconciler = Reconciler(svc.redis, svc.settings, svc.db)
        batch = svc.settings.order_dispatch_batch
        self.dispatcher = OrderDispatcher(
            CelerySender(celery_app, ORDER_TASK, per_message=batch),
            _count_dispatch_failures,
            max_batch=batch,
            linger=svc.settings.order_dispatch_linger_ms / 1000,
        )


_build_lock = threading.Lock()


def seckill_state(app: Flask) -> SeckillState:
    """The app's one SeckillState (for the route and the WSGI fast path; no context needed)."""
    state = app.extensions.get(_EXTENSION)
    if state is None:
        with _build_lock:
            state = app.extensions.get(_EXTENSION)
            if state is None:
                state = SeckillState(app.extensions["hmdp"], app.extensions["hmdp_celery"])
                app.extensions[_EXTENSION] = state
    return state


def _load_from_database(state: SeckillState, voucher_id: int) -> bool:
    """Load a voucher Redis does not know; False if the database does not know it either.

    Not the database stock as it is: reservations may still be unsettled (Redis
    lost the key, not the sales), so the load is reconciliation's in its
    "missing" mode (:mod:`cache.reconcile`): stock = database stock minus the
    unsettled reservations, and the buyers and their ids restored. One loader
    per voucher; the others wait for it.
    """
    if voucher_id in state.missing:
        return False
    svc = state.services
    with svc.db.session() as session:
        row = session.get(SeckillVoucher, voucher_id)
    if row is None:
        state.missing.add(voucher_id)
        return False
    report = state.reconciler.run([voucher_id], mode=MISSING, wait=LOAD_WAIT_SECONDS)
    if any(repair.skipped for repair in report.vouchers):
        raise ApiError("voucher is being loaded, try again", 503, {"Retry-After": 1})
    stream_vouchers.prepare(svc.redis, svc.settings, [voucher_id])
    return True


def flush_dispatch(app: Flask, timeout: float = 10.0) -> bool:
    """Wait until ``app`` published (or dropped) every order task queued so far."""
    state = app.extensions.get(_EXTENSION)
    return state is None or state.dispatcher.flush(timeout)


def complete_order(state: SeckillState, voucher_id: int, result: GateResult) -> GateResult:
    """Everything after the gate's first answer, in one place for the route and the fast path.

    A voucher Redis does not know is loaded from the database and tried once
    more; the final outcome is counted; a reservation is dispatched (failures
    are counted, never raised). An unconfirmed one is not: it becomes a row
    only from the Stream entry (beat's recovery, or a task's group commit), so
    if its master dies before a replica had it, it is lost with the entry and
    no row of it appears beside the order the client's retry then makes.
    ``result`` must carry the buyer's id.
    """
    if result.outcome == UNKNOWN and _load_from_database(state, voucher_id):
        assert result.user_id is not None
        result = state.gate.reserve(voucher_id, result.user_id)
    if result.outcome == DUPLICATE and result.order_id is None:
        result = _with_order_of_row(state, voucher_id, result)
    _OUTCOMES[result.outcome].inc()
    if result.ok:
        assert result.order_id is not None and result.user_id is not None
        entry = OrderEntry(result.order_id, result.user_id, voucher_id, result.stream_id)
        state.dispatcher.submit(entry.to_payload())
    return result


def _with_order_of_row(state: SeckillState, voucher_id: int, result: GateResult) -> GateResult:
    """A refused buyer whose issued id Redis lost (state loss): the id of their row, if any.

    Reconciliation (:mod:`cache.reconcile`) restores the ids, so this costs a
    database read only between a loss and the repair. No row (the reservation
    is still in the Stream, or was lost) or the database down: the 409 goes
    without an id rather than failing.
    """
    try:
        with state.services.db.session() as session:
            order_id = session.scalar(
                select(VoucherOrder.id).where(
                    VoucherOrder.user_id == result.user_id, VoucherOrder.voucher_id == voucher_id
                )
            )
    except DBAPIError as exc:
        log.warning("no order id for a refused buyer of voucher %s: %s", voucher_id, exc)
        return result
    return result if order_id is None else replace(result, order_id=int(order_id))


# Every 503 of the gate is worth retrying a second later (the next second has new ids).
RETRY_SOON: tuple[tuple[str, str], ...] = (("Retry-After", "1"),)
_NONE: tuple[tuple[str, str], ...] = ()
_EXHAUSTED = fail_bytes("order ids exhausted for this second, try again")
_UNCONFIRMED = fail_bytes(
    "order not confirmed by a replica yet: try again, the answer will give its order id"
)


def answer_of(result: GateResult) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """The HTTP status, envelope and extra headers of an outcome, for the route and the fast path.

    200: data = the order id (a string). 409 "already ordered": data = the id
    issued to the buyer before (null only when neither Redis nor the database
    knows it, see :func:`complete_order`), so a retried order always learns its
    id. Other refusals: data = null. 503 with ``Retry-After: 1``: ids exhausted
    for this second, or a reservation fewer replicas acknowledged than required
    (it stays; the retry is told 409 "already ordered" with its id).
    """
    if result.ok:
        return 200, ok_bytes(f'"{result.order_id}"'), _NONE  # decimal digits: a JSON string
    if result.outcome == DUPLICATE and result.order_id is not None:
        return 409, envelope(str(result.order_id), _REFUSALS[DUPLICATE]).encode(), _NONE
    if result.outcome in _REFUSALS:
        return 409, fail_bytes(_REFUSALS[result.outcome]), _NONE
    if result.outcome == UNKNOWN:
        return 404, fail_bytes("voucher not found"), _NONE
    if result.outcome == UNCONFIRMED:
        return 503, _UNCONFIRMED, RETRY_SOON
    return 503, _EXHAUSTED, RETRY_SOON


class VoucherPath(Path):
    voucher_id: Id


OrderId = Annotated[str, Field(pattern="^[0-9]+$", description="the order id, decimal")]


@bp.post("/voucher-order/seckill/<id:voucher_id>")
@login_required
@contract(
    path=VoucherPath,
    data=OrderId,
    errors={
        404: "voucher not found",
        409: "sold out, already ordered (data: the order id), not started or ended",
        503: (
            "voucher being loaded, order ids exhausted for this second, or the order not "
            "confirmed by a replica yet (Retry-After; the retry answers 409 with its id)"
        ),
    },
    error_data={409: OrderId | None},
    validate=False,  # the hot path: the URL converter checked the id; there is no body
)
def seckill(voucher_id: int) -> Response:
    """Flash-sale order: 200 with the order id, or 409 with the reason, at once.

    Normally answered below Flask by web/order_fastpath.py with the same code
    (:func:`complete_order`, :func:`answer_of`); this route is its fallback.
    """
    user = require_user()
    state = seckill_state(current_app)
    result = complete_order(state, voucher_id, state.gate.reserve(voucher_id, user.id))
    status, body, headers = answer_of(result)
    return Response(body, status=status, headers=headers, mimetype=MIMETYPE)


# --- audit -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeverRow:
    """An order id the gate answered 200 with that will never become an order row."""

    order_id: int
    user_id: int
    row_id: int | None  # the buyer's actual order, if they have one
    why: str

    def line(self) -> str:
        """What it means for the client, and what to do."""
        told = f"  order id {self.order_id} answered 200 to user {self.user_id} will never exist"
        if self.row_id is not None:
            return f"{told}: their order is {self.row_id} ({self.why}); tell them that id"
        return f"{told}: no order exists for them ({self.why}); the sale is lost, compensate them"


@dataclass
class VoucherAudit:
    """Redis against the database for one seckill voucher."""

    voucher_id: int
    db_stock: int | None = None
    db_orders: int = 0
    redis_stock: int | None = None
    redis_buyers: int = 0
    unsettled: int = 0
    dead_letters: int = 0
    lost: int = 0
    phantom: int = 0
    duplicates: int = 0
    unissued: int = 0  # rows whose id is not the id the gate issued to their buyer
    never_rows: list[NeverRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found for this voucher."""
        return not self.problems

    def line(self) -> str:
        """One printable line of figures (and problems)."""
        return (
            f"voucher {self.voucher_id}: db stock={self.db_stock} orders={self.db_orders} | "
            f"redis stock={self.redis_stock} buyers={self.redis_buyers} | "
            f"unsettled={self.unsettled} dead={self.dead_letters} lost={self.lost} "
            f"phantom={self.phantom} duplicates={self.duplicates} "
            f"unissued={self.unissued} never_rows={len(self.never_rows)}"
            + ("" if self.ok else " | MISMATCH: " + "; ".join(self.problems))
        )


@dataclass
class OrderAudit:
    """The whole audit: per voucher, plus the Stream's backlog."""

    vouchers: list[VoucherAudit]
    stream_length: int
    pending: int
    dead_letters: int
    malformed: int

    @property
    def ok(self) -> bool:
        """No oversell, loss, duplicate, phantom, lost id, dead letter or malformed entry."""
        return self.malformed == 0 and all(v.ok for v in self.vouchers)

    @property
    def unsettled(self) -> int:
        """Reservations still waiting to become rows (not an error by itself)."""
        return sum(v.unsettled for v in self.vouchers)

    def lines(self) -> list[str]:
        """The report ``flask orders verify`` prints."""
        out = []
        for v in self.vouchers:
            out.append(v.line())
            out += [never.line() for never in v.never_rows]
        return out + [
            f"stream: length={self.stream_length} pending={self.pending} "
            f"dead_letters={self.dead_letters} malformed={self.malformed}",
            f"result: {'OK' if self.ok else 'MISMATCH'}"
            + (f" ({self.unsettled} reservations not yet persisted)" if self.unsettled else ""),
        ]


def _entries_by_voucher(client, keys: list[str]) -> tuple[dict[int, list[OrderEntry]], int]:  # type: ignore[no-untyped-def]
    """The reservations of the streams ``keys`` by voucher, and how many entries were malformed."""
    entries: dict[int, list[OrderEntry]] = defaultdict(list)
    malformed = 0
    for key in keys:
        for stream_id, fields in order_stream.iter_stream(client, key):
            try:
                entry = OrderEntry.from_fields(fields, stream_id)
            except MalformedEntry:
                malformed += 1
                continue
            entries[entry.voucher_id].append(entry)
    return entries, malformed


@dataclass(frozen=True)
class _Seen:
    """What the audit read of one voucher, in the order of the reads (see verify_orders)."""

    before: RedisSnapshot
    pending: list[OrderEntry]
    dead: list[OrderEntry]
    db_stock: int | None
    rows: list[tuple[int, int]]  # (order id, user id)
    after: RedisSnapshot
    drift: list[DriftRecord]


def _never_rows(seen: _Seen) -> list[NeverRow]:
    """Issued ids that will never be rows: drift events, and ids nothing holds any more."""
    row_of = {user: order_id for order_id, user in seen.rows}
    found = [NeverRow(d.issued_id, d.user_id, d.row_id, "a drift event") for d in seen.drift]
    accounted = {d.issued_id for d in seen.drift} | set(row_of.values())
    for entry in seen.pending:  # will settle as drift events: the buyer has another row
        row_id = row_of.get(entry.user_id)
        if row_id is not None and row_id != entry.order_id:
            found.append(NeverRow(entry.order_id, entry.user_id, row_id, "a second reservation"))
    accounted |= {e.order_id for e in seen.pending + seen.dead}
    for user, order_id in sorted(seen.before.issued.items()):
        if order_id not in accounted:  # no row, no entry, no dead letter, no drift record
            found.append(NeverRow(order_id, user, row_of.get(user), "no stream entry left"))
    return found


def _audit(v: int, seen: _Seen) -> VoucherAudit:
    snap, db_stock, users = seen.before, seen.db_stock, [user for _, user in seen.rows]
    a = VoucherAudit(v, db_stock, len(users), snap.stock, len(snap.buyers))
    pending = {e.user_id for e in seen.pending}
    dead = {e.user_id for e in seen.dead}
    a.unsettled, a.dead_letters = len(pending), len(dead)
    db_users = set(users)
    a.duplicates = len(users) - len(db_users)
    a.lost = len(snap.buyers - db_users - pending - dead)
    a.phantom = len(db_users - seen.after.buyers)
    a.unissued = sum(seen.after.issued.get(user) != oid for oid, user in seen.rows)
    a.never_rows = _never_rows(seen)
    if db_stock is None:
        a.problems.append("not a seckill voucher in the database")
    elif db_stock < 0 or (snap.stock is not None and snap.stock < 0):
        a.problems.append("OVERSELL: negative stock")
    if snap.stock is None and (users or snap.buyers or a.unsettled):
        a.problems.append("orders exist but Redis has no stock for the voucher")
    redis_initial = None if snap.stock is None else snap.stock + len(snap.buyers)
    db_initial = None if db_stock is None else db_stock + len(users)
    if None not in (redis_initial, db_initial) and redis_initial != db_initial:
        a.problems.append(
            f"initial stock differs: redis {snap.stock}+{len(snap.buyers)} "
            f"!= db {db_stock}+{len(users)}"
        )
    if a.duplicates:
        a.problems.append(f"{a.duplicates} duplicate orders")
    if a.lost:
        a.problems.append(f"{a.lost} reservations LOST (no row, no stream entry)")
    if a.phantom:
        a.problems.append(f"{a.phantom} orders without a Redis reservation")
    if a.unissued:
        a.problems.append(
            f"{a.unissued} rows whose id is not the id the gate issued to their buyer "
            "(Redis lost the ids: run 'flask orders reconcile'; or rows the gate never made)"
        )
    if a.never_rows:
        a.problems.append(
            f"{len(a.never_rows)} order ids answered 200 will never be rows (listed below)"
        )
    if a.dead_letters:
        a.problems.append(f"{a.dead_letters} dead-lettered reservations need attention")
    return a


def verify_orders(svc: Services, voucher_id: int | None = None) -> OrderAudit:
    """Audit seckill orders (one voucher, or all): see the module doc for the rules.

    Every seckill voucher of the database, each with its own Stream and dead
    letters (and the legacy stream while it exists). Safe while orders are
    still being settled: reads go Redis (buyers, issued ids), then the Streams,
    then the database, then Redis again, then the drift records, so an entry settled in between is seen either in the Stream or as
    a row (or as a drift record), never as lost. Rows are checked against the
    ids issued as read AFTER the database (a row's id was issued before it).
    """
    client, settings = svc.redis, svc.settings
    ids = all_vouchers(svc.db) if voucher_id is None else [voucher_id]
    streams = [order_stream.voucher_stream(settings, v) for v in ids]
    streams += order_stream.legacy_of(client, settings)
    before = {v: redis_snapshot(client, v) for v in ids}
    pending, malformed = _entries_by_voucher(client, [s.key for s in streams])
    dead, _ = _entries_by_voucher(client, [s.dead for s in streams])
    db: dict[int, tuple[int | None, list[tuple[int, int]]]] = {}
    with svc.db.session() as session:  # one transaction: one snapshot of stock and rows
        for v in ids:
            stock = session.scalar(
                select(SeckillVoucher.stock).where(SeckillVoucher.voucher_id == v)
            )
            rows = session.execute(
                select(VoucherOrder.id, VoucherOrder.user_id).where(VoucherOrder.voucher_id == v)
            ).all()
            db[v] = (stock, [(int(oid), int(user)) for oid, user in rows])
    after = {v: redis_snapshot(client, v) for v in ids}
    stats = order_stream.stream_stats(client, streams)
    audits = [
        _audit(
            v,
            _Seen(
                before[v],
                pending.get(v, []),
                dead.get(v, []),
                *db[v],
                after[v],
                drift_records(client, v),
            ),
        )
        for v in ids
    ]
    return OrderAudit(audits, stats.length, stats.pending, stats.dead_letters, malformed)


@bp.cli.command("verify")
@click.argument("voucher_id", required=False, type=click.IntRange(1, MAX_ID))
@click.option("--drained", is_flag=True, help="Also fail while reservations are not yet persisted.")
@click.option(
    "--wait",
    type=click.FloatRange(0),
    default=0.0,
    help="Seconds to wait for the backlog to drain before judging.",
)
def verify_command(voucher_id: int | None, drained: bool, wait: float) -> None:
    """Compare Redis and database orders; exit 1 on oversell, loss or duplicates."""
    svc = services()
    deadline = time.monotonic() + wait
    audit = verify_orders(svc, voucher_id)
    while audit.unsettled and time.monotonic() < deadline:
        time.sleep(0.5)
        audit = verify_orders(svc, voucher_id)
    for line in audit.lines():
        click.echo(line)
    if not audit.ok or (drained and audit.unsettled):
        raise SystemExit(1)


@bp.cli.command("replay")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def replay_command(entry_ids: tuple[str, ...], replay_all: bool) -> None:
    """Move dead letters back to the orders Stream (see web/order_replay.py).

    ENTRY_ID: a dead letter's id, or the id its entry had in the Stream. An
    entry whose order is a row already is only removed. Exit 1 if an id is
    unknown or an entry malformed (kept).
    """
    if replay_all == bool(entry_ids):
        raise click.UsageError("give ENTRY_ID ... or --all, not both")
    results = replay_dead_letters(services(), None if replay_all else list(entry_ids))
    for result in results:
        click.echo(result.line())
    line, complete = summary(results)
    sent = dispatch_replayed(current_app.extensions["hmdp_celery"], ORDER_TASK, results)
    click.echo(line + (f"; {sent}" if sent else ""))
    if not complete:
        raise SystemExit(1)


@bp.cli.command("reconcile")
@click.argument("voucher_id", required=False, type=click.IntRange(1, MAX_ID))
def reconcile_command(voucher_id: int | None) -> None:
    """Repair the gate state Redis lost (every live voucher, or one) and print what changed."""
    svc = services()
    report = Reconciler(svc.redis, svc.settings, svc.db).run(
        None if voucher_id is None else [voucher_id], wait=LOAD_WAIT_SECONDS
    )
    for line in report.lines():
        click.echo(line)
    if any(repair.skipped for repair in report.vouchers):
        raise SystemExit(1)
