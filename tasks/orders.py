"""Turning a seckill reservation into exactly one order row.

:func:`settle_order` is THE settling code path: the Celery task
``tasks.orders.create_voucher_order`` and the beat recovery job both call it,
so whatever delivered a reservation (a first message, a redelivery after a
worker was killed, a duplicate message, recovery from the Stream), the result
is one row. Defences, outermost first:

1. the per-user lock ``lock:order:{userId}`` (cache.locks.RLock, watchdog
   renewed): one settle per user at a time, across processes;
2. an existence check by order id and by (user, voucher): a settled order
   returns early; a row of the same buyer under ANOTHER id means the gate sold
   to them twice (Redis lost the buyer): a drift event, counted, recorded for
   the audit (:func:`cache.reconcile.record_drift`) and acknowledged;
3. one transaction: INSERT the order, then ``UPDATE tb_seckill_voucher SET
   stock = stock - 1 WHERE voucher_id = ? AND stock > 0``, commit. The insert
   goes first so the voucher's hot row is locked only from the UPDATE to the
   commit; the UNIQUE (user_id, voucher_id) constraint turns any race that got
   past 1 and 2 into an IntegrityError, i.e. "already settled". An UPDATE that
   matches no row means the database has no stock left for a reservation
   Redis made: an oversell attempt. Nothing is written; it is logged, counted
   and dead-lettered for an operator. It must never happen. (If the voucher
   row itself is gone, deleted after its sale began, the entry is
   dead-lettered as an unknown voucher instead, not counted as an oversell.)

Before any of it, the replication fence (``HMDP_SECKILL_WAIT_REPLICAS`` > 0):
an entry read from a master that no replica has yet could be lost by a
failover, and its buyer's retry sold again under a new id; so nothing is
written for an entry until a fence write in its voucher's slot, made after the
entry was read, is acknowledged by the replicas (:func:`cache.replication.fence`,
one per voucher of a batch). A fence not acknowledged in time is an outside
failure (:class:`cache.replication.NotReplicated`, a Redis-unavailable error):
nothing is written for that voucher's entries, nothing is counted against them,
and they stay in the Stream for the task's retry or recovery.

After the commit the Stream entry is acknowledged (XACK + XDEL, see
:mod:`cache.order_stream`).

Group commit (:func:`settle_orders`): a Celery message costs more than the
database work of one order (BENCHMARKS.md, "Seckill drain into MariaDB"),
so a task does not settle its own entry
alone: it first claims up to ``order_settle_batch`` entries nobody took yet
from the Stream's consumer group, takes their users' locks in one script call,
and writes them in ONE transaction (one multi-row INSERT, one guarded
``stock = stock - n WHERE stock >= n`` per voucher, one COMMIT), then
acknowledges them (one ``lua/stream_settle.lua`` call per stream). The tasks
of those entries, when they run, find their entry gone from the Stream
(settled) and return at once. The
defences above hold for every order of a batch; anything unusual (a busy
lock, a duplicate, not enough stock) sends the entries concerned through the
one-order path, which sorts out exactly which ones are duplicates or oversells.
Database and Redis outages raise; the task retries with capped exponential
backoff and full jitter, and when it gives up, the entry is still in the
Stream for recovery.

One message per micro-batch (:func:`run_batch_task`): for the same reason the
web sends one task message per batch of reservations, not one per order
(web/order_dispatch.py); the task's argument is then the list of their
payloads, and each of them is settled as above (claims of unclaimed entries,
group commit, an entry already gone is a DUPLICATE). A message of one payload
(older senders, tests) is still taken.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import redis
from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy import Connection, Row, and_, bindparam, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from cache import order_stream
from cache.connection import UNAVAILABLE
from cache.locks import LockError, RLock, acquire_all, release_all
from cache.order_stream import MalformedEntry, OrderEntry
from cache.reconcile import record_drift
from cache.replication import NotReplicated, ReplicaWait, fence
from cache.seckill import fence_key
from metrics import (
    ORDER_BATCH_SETTLED,
    ORDER_DRIFT,
    ORDER_OVERSELL_ATTEMPTS,
    ORDER_TASK_SECONDS,
    ORDER_TASKS,
)
from models.entities import SeckillVoucher, VoucherOrder, utcnow
from models.session import Database
from services import Services

log = logging.getLogger(__name__)

TASK_NAME = "tasks.orders.create_voucher_order"
LOCK_KEY = "lock:order:{user_id}"
LOCK_WAIT_SECONDS = 10.0

# Outcomes of settle_order (also the ORDER_TASKS labels).
CREATED = "created"
DUPLICATE = "duplicate"
OVERSELL = "oversell"
REJECTED = "rejected"
UNKNOWN_VOUCHER = "unknown_voucher"
DRIFT = "drift"  # the buyer already has a row under another id (Redis lost state)

# Failures worth retrying: the backends are down or slow, or the lock is busy.
RETRYABLE: tuple[type[BaseException], ...] = (
    OperationalError,
    PoolTimeout,
    *UNAVAILABLE,
    LockError,
)
MAX_RETRIES = 8
BACKOFF_FACTOR = 1
BACKOFF_MAX = 30


# The three statements of a settle, built once: building and coercing a Core
# statement per call cost more CPU than the database's work for it (the drain
# rate is CPU-bound, see BENCHMARKS.md). Parameters: oid, uid, vid, now.
_EXISTING = (
    select(VoucherOrder.id, VoucherOrder.user_id, VoucherOrder.voucher_id)
    .where(
        or_(
            VoucherOrder.id == bindparam("oid"),
            and_(
                VoucherOrder.user_id == bindparam("uid"),
                VoucherOrder.voucher_id == bindparam("vid"),
            ),
        )
    )
    .limit(1)
)
_INSERT = insert(VoucherOrder).values(
    id=bindparam("oid"),
    user_id=bindparam("uid"),
    voucher_id=bindparam("vid"),
    create_time=bindparam("now"),
    update_time=bindparam("now"),
)
_TAKE_STOCK = (
    update(SeckillVoucher)
    .where(SeckillVoucher.voucher_id == bindparam("vid"), SeckillVoucher.stock > 0)
    .values(stock=SeckillVoucher.stock - 1, update_time=bindparam("now"))
)
_VOUCHER = select(SeckillVoucher.voucher_id).where(SeckillVoucher.voucher_id == bindparam("vid"))

# The batch versions. The existence query and the INSERT of a batch are SQL text with
# the batch's integers written in (``:d``: an OrderEntry's ids are ints, checked when it
# was parsed, so nothing but digits reaches the text): compiling expanding IN lists and
# escaping seven parameters per row, what the Core statements cost, took more of the
# worker's CPU than the database's work for the batch. The columns and the defaults the
# INSERT writes are the model's; the stock of one voucher is taken for n orders at once.
_ORDERS = VoucherOrder.__table__
_EXISTING_MANY = (
    f"SELECT id, user_id, voucher_id FROM {_ORDERS.name}"
    " WHERE id IN ({oids}) OR (user_id IN ({uids}) AND voucher_id IN ({vids}))"
)
_ROW_DEFAULTS = {
    column.name: int(column.default.arg)
    for column in _ORDERS.c
    if column.default is not None and column.default.is_scalar
}
_INSERT_MANY = (
    f"INSERT INTO {_ORDERS.name} (id, user_id, voucher_id, create_time, update_time"
    + "".join(f", {name}" for name in _ROW_DEFAULTS)
    + ") VALUES "
)
_ROW_REST = "".join(f", {value:d}" for value in _ROW_DEFAULTS.values()) + ")"


def _ints(values: Iterable[int]) -> str:
    return ", ".join([f"{value:d}" for value in values])


def _insert_many(entries: list[OrderEntry], now: datetime) -> str:
    """The multi-row INSERT of ``entries``, every value written into the text."""
    stamp = now.strftime("'%Y-%m-%d %H:%M:%S.%f'")  # SQLAlchemy's own DATETIME text
    return _INSERT_MANY + ", ".join(
        [
            f"({e.order_id:d}, {e.user_id:d}, {e.voucher_id:d}, {stamp}, {stamp}{_ROW_REST}"
            for e in entries
        ]
    )


_TAKE_STOCK_MANY = (
    update(SeckillVoucher)
    .where(SeckillVoucher.voucher_id == bindparam("vid"), SeckillVoucher.stock >= bindparam("n"))
    .values(stock=SeckillVoucher.stock - bindparam("n"), update_time=bindparam("now"))
)


def _params(entry: OrderEntry) -> dict[str, object]:
    return {"oid": entry.order_id, "uid": entry.user_id, "vid": entry.voucher_id, "now": utcnow()}


def _existing(conn: Connection, params: dict[str, object]) -> Row | None:
    return conn.execute(_EXISTING, params).first()


def _classify(row: Row, entry: OrderEntry) -> str:
    """The outcome of an entry that met an existing ``row``.

    The same id: this entry was settled before (DUPLICATE). The same user and
    voucher under another id: the gate sold twice to one buyer, which only
    happens when Redis lost the buyer (DRIFT: the id the client holds will
    never be a row). The id of another buyer's order: REJECTED.
    """
    if row.id == entry.order_id and (row.user_id, row.voucher_id) != (
        entry.user_id,
        entry.voucher_id,
    ):
        return REJECTED  # the id belongs to another order: never overwrite it
    if row.id != entry.order_id:
        return DRIFT
    return DUPLICATE


def persist_order(db: Database, entry: OrderEntry) -> str:
    """Write the order row and take the database stock, once (caller holds the lock).

    Returns CREATED, DUPLICATE (already there), DRIFT (the buyer has a row
    under another id; nothing written), OVERSELL (no stock left in the
    database; nothing written), UNKNOWN_VOUCHER (no such seckill voucher
    in the database, e.g. deleted after the sale began; nothing written) or
    REJECTED (order id taken by another order).
    One connection checkout: the existence check, then the write transaction
    (INSERT, guarded UPDATE, COMMIT). On SQLite the check's read is committed
    before the write, so that the write transaction starts with a write (SQLite
    then waits for the lock instead of failing to upgrade a read snapshot); on
    MySQL the check is a plain consistent read and the INSERT and UPDATE lock
    what they touch, so the same transaction goes on (one round trip less).
    Core statements built once, not the ORM unit of work: this runs once per
    order and its CPU cost is the drain rate.
    """
    params = _params(entry)
    with db.engine.connect() as conn:
        row = _existing(conn, params)
        if row is not None:
            return _classify(row, entry)
        if conn.dialect.name == "sqlite":
            conn.commit()
        try:
            conn.execute(_INSERT, params)
            if conn.execute(_TAKE_STOCK, params).rowcount != 1:
                conn.rollback()  # the insert goes with it
                return OVERSELL if conn.execute(_VOUCHER, params).first() else UNKNOWN_VOUCHER
            conn.commit()
        except IntegrityError:
            conn.rollback()
            row = _existing(conn, params)
            if row is None:  # not a duplicate after all: let the caller retry
                raise
            return _classify(row, entry)
    return CREATED


def persist_orders(db: Database, entries: list[OrderEntry]) -> dict[OrderEntry, str]:
    """Write many orders in ONE transaction (caller holds every entry's user lock).

    Per entry the same outcome as :func:`persist_order`. One existence query
    for the whole batch, then one multi-row INSERT and one guarded UPDATE per
    voucher (in voucher order, so two batches never deadlock on them), one
    COMMIT. Only the usual case is done in bulk: if the database has less
    stock than the batch takes, or the UNIQUE constraint fires, the whole
    transaction is rolled back and each of those entries goes through
    :func:`persist_order` alone, which tells the oversells and duplicates apart.
    """
    if len(entries) <= 1:
        return {entry: persist_order(db, entry) for entry in entries}
    outcomes: dict[OrderEntry, str] = {}
    fresh: list[OrderEntry] = []
    alone: list[OrderEntry] = []  # a second entry for one order id or one (user, voucher)
    with db.engine.connect() as conn:
        existing = _EXISTING_MANY.format(
            oids=_ints(e.order_id for e in entries),
            uids=_ints(sorted({e.user_id for e in entries})),
            vids=_ints(sorted({e.voucher_id for e in entries})),
        )
        rows = conn.exec_driver_sql(existing).all()
        by_id = {row.id: row for row in rows}
        by_pair = {(row.user_id, row.voucher_id): row for row in rows}
        ids: set[int] = set()
        pairs: set[tuple[int, int]] = set()
        for entry in entries:
            pair = (entry.user_id, entry.voucher_id)
            row = by_id.get(entry.order_id) or by_pair.get(pair)
            if row is not None:
                outcomes[entry] = _classify(row, entry)
            elif entry.order_id in ids or pair in pairs:
                alone.append(entry)
            else:
                ids.add(entry.order_id)
                pairs.add(pair)
                fresh.append(entry)
        if fresh:
            if conn.dialect.name == "sqlite":
                conn.commit()  # start the write transaction with a write (see persist_order)
            now = utcnow()
            per_voucher = Counter(entry.voucher_id for entry in fresh)
            try:
                conn.exec_driver_sql(_insert_many(fresh, now))
                enough = all(
                    conn.execute(_TAKE_STOCK_MANY, {"vid": vid, "n": n, "now": now}).rowcount == 1
                    for vid, n in sorted(per_voucher.items())
                )
            except IntegrityError:
                enough = False
            if enough:
                conn.commit()
                outcomes.update(dict.fromkeys(fresh, CREATED))
            else:
                conn.rollback()
                alone = fresh + alone
    for entry in alone:
        outcomes[entry] = persist_order(db, entry)
    return outcomes


# Outcomes no retry can change: the entry goes to the dead letters at once.
_DEAD_LETTER_REASONS = {
    OVERSELL: "oversell: no database stock left",
    REJECTED: "order id belongs to another order",
    UNKNOWN_VOUCHER: "unknown voucher: not a seckill voucher in the database",
}


def _finish(services: Services, outcomes: dict[OrderEntry, str]) -> None:
    """After the database: count and report oversells, settle or dead-letter each entry."""
    settings, client = services.settings, services.redis
    settled: list[OrderEntry] = []
    for entry, outcome in outcomes.items():
        if outcome == OVERSELL:
            ORDER_OVERSELL_ATTEMPTS.inc()
            log.error(
                "OVERSELL ATTEMPT: reservation %s (user %s, voucher %s) has no database stock",
                entry.order_id,
                entry.user_id,
                entry.voucher_id,
            )
        elif outcome == DRIFT:
            _record_drift(services, entry)
        if entry.stream_id is None:
            continue
        if outcome in _DEAD_LETTER_REASONS:
            fields = {k: str(v) for k, v in entry.to_payload().items() if k != "streamId"}
            reason = _DEAD_LETTER_REASONS[outcome]
            stream = order_stream.stream_of(settings, entry)
            order_stream.dead_letter(client, stream, entry.stream_id, fields, reason)
        else:
            settled.append(entry)
    order_stream.acknowledge_many(client, settings, settled)


def _record_drift(services: Services, entry: OrderEntry) -> None:
    """A second reservation of one buyer: count it and keep it for the audit (before the ack).

    The client was answered 200 with ``entry.order_id``, which will never be a
    row: their order is the row that exists. Recorded before the entry is
    acknowledged, so a crash in between records it again on redelivery (the
    record is idempotent); ``flask orders verify`` lists it.
    """
    with services.db.session() as session:
        row_id = session.scalar(
            select(VoucherOrder.id).where(
                VoucherOrder.user_id == entry.user_id, VoucherOrder.voucher_id == entry.voucher_id
            )
        )
    ORDER_DRIFT.inc()
    log.error(
        "DRIFT: user %s already has order %s for voucher %s; order id %s answered to the "
        "client will never exist (Redis lost the buyer)",
        entry.user_id,
        row_id,
        entry.voucher_id,
        entry.order_id,
    )
    record_drift(services.redis, entry.voucher_id, entry.user_id, entry.order_id, int(row_id))


def _release(locks: list[RLock]) -> None:
    """Release after the database work; a lost lease is logged (the constraint held)."""
    if not locks:
        return
    try:
        lost = release_all(locks[0].client, locks)
    except (redis.RedisError, OSError) as exc:  # they expire by themselves
        log.warning("%d order locks not released: %s", len(locks), exc)
        return
    for lock in lost:
        log.warning("order lock %s expired during settle", lock.name)


def _fenced(services: Services, entries: list[OrderEntry]) -> list[OrderEntry]:
    """The entries the replicas have for sure: those of the vouchers whose fence held.

    One fence per voucher (on a cluster each voucher's slot has its own master);
    with ``HMDP_SECKILL_WAIT_REPLICAS=0`` all of them, nothing sent. A master that
    is unavailable raises, as any Redis call does.
    """
    wait = ReplicaWait.of(services.settings)
    if wait is None:
        return entries
    vouchers = sorted({entry.voucher_id for entry in entries})
    held = {v for v in vouchers if fence(services.redis, fence_key(v), wait)}
    if len(held) < len(vouchers):
        log.warning(
            "no replica acknowledged the fence of vouchers %s in %d ms: their entries wait",
            sorted(set(vouchers) - held),
            wait.timeout_ms,
        )
    return [entry for entry in entries if entry.voucher_id in held]


def _not_replicated(entries: list[OrderEntry]) -> NotReplicated:
    vouchers = sorted({entry.voucher_id for entry in entries})
    return NotReplicated(f"no replica acknowledged the entries of vouchers {vouchers} yet")


def settle_orders(services: Services, entries: list[OrderEntry]) -> dict[OrderEntry, str]:
    """Settle a batch of Stream entries: every user's lock, one transaction, one ack.

    Group commit (see the module doc): :func:`settle_free`, then the entries
    whose user lock was busy (a task or recovery is settling that user) one by
    one with the blocking :func:`settle_order`, so the batch never waits on one
    user. Raises on outages like :func:`settle_order`; what was not settled
    stays in the Stream (in the PEL) for recovery.
    """
    outcomes = settle_free(services, entries)
    for entry in entries:
        if entry not in outcomes:
            outcomes[entry] = settle_order(services, entry)
    return outcomes


def settle_free(services: Services, entries: list[OrderEntry]) -> dict[OrderEntry, str]:
    """Group commit of the entries whose user locks are free now; the outcomes of those.

    The others are left out, untouched (recovery tries them on a later run).
    Entries of a voucher whose replication fence failed are not written: the
    others are, then :class:`NotReplicated` is raised (an outside failure).
    """
    settings, client = services.settings, services.redis
    fenced = _fenced(services, entries)
    locks: dict[int, RLock] = {}
    for entry in fenced:
        if entry.user_id not in locks:
            key = LOCK_KEY.format(user_id=entry.user_id)
            locks[entry.user_id] = RLock(client, key, settings.order_lock_lease_ms)
    taken = acquire_all(client, list(locks.values()))
    taken_ids = {id(lock) for lock in taken}
    held_users = {user for user, lock in locks.items() if id(lock) in taken_ids}
    try:
        outcomes = persist_orders(services.db, [e for e in fenced if e.user_id in held_users])
    finally:
        _release(taken)
    _finish(services, outcomes)
    if len(fenced) < len(entries):
        raise _not_replicated([entry for entry in entries if entry not in fenced])
    return outcomes


def settle_order(
    services: Services, entry: OrderEntry, lock_wait: float = LOCK_WAIT_SECONDS
) -> str:
    """Persist one reservation exactly once and settle its Stream entry.

    The one function the task and recovery share. Raises on outages (the
    entry stays in the Stream; a replication fence not acknowledged is one:
    :class:`NotReplicated`), and LockError if the user's lock stays busy
    for ``lock_wait`` s; returns the outcome otherwise.
    """
    settings = services.settings
    client = services.redis
    if not _fenced(services, [entry]):
        raise _not_replicated([entry])
    lock = RLock(client, LOCK_KEY.format(user_id=entry.user_id), settings.order_lock_lease_ms)
    if not lock.acquire(blocking=True, wait_timeout=lock_wait):
        raise LockError(f"order lock of user {entry.user_id} busy for {lock_wait}s")
    try:
        outcome = persist_order(services.db, entry)
    finally:
        _release([lock])
    _finish(services, {entry: outcome})
    return outcome


def run_order_task(services: Services, payload: object) -> str:
    """The task body without Celery (tests call it directly); returns its own entry's outcome.

    With a Stream id (every dispatched task has one) and batching on: claim a
    batch of unclaimed entries and settle it (the task's own entry is usually
    in it); if the own entry is already gone from the Stream, it was settled
    before this delivery: DUPLICATE, without touching the database.
    """
    try:
        entry = OrderEntry.from_payload(payload)
    except MalformedEntry as exc:
        # Nothing to retry; if it came from a real reservation, the Stream
        # entry is intact and recovery settles it from there.
        log.error("malformed order task payload %r: %s", payload, exc)
        return REJECTED
    settings, client = services.settings, services.redis
    batch_size = settings.order_settle_batch
    if entry.stream_id is None or batch_size <= 1:
        return settle_order(services, entry)
    stream = order_stream.stream_of(settings, entry)
    present, claimed = order_stream.claim_new(client, stream, batch_size, entry.stream_id)
    batch, _ = order_stream.parse_entries(client, settings, stream, claimed)
    own = None
    if batch:
        others: Counter[str] = Counter()
        for other, outcome in settle_orders(services, batch).items():
            if other.stream_id == entry.stream_id:  # one stream: its ids are unique
                own = outcome
            else:
                others[outcome] += 1
        _count(ORDER_BATCH_SETTLED, "outcome", others)
    if own is not None:
        return own
    if not present:
        return DUPLICATE
    return settle_order(services, entry)


def run_batch_task(services: Services, payloads: list) -> dict[str, str]:
    """The body of a task carrying many reservations; their outcomes by order id.

    The web's dispatcher sends one message per micro-batch (web/order_dispatch.py).
    Per order exactly what :func:`run_order_task` does for one, so any number of
    deliveries of the message give one row per order: claim the entries nobody
    took yet and settle them with group commit (the message's own entries are
    usually among them), repeat while some own entries are still unclaimed, and
    an own entry gone from the Stream was settled before (DUPLICATE, no
    database). The payloads may be of several vouchers, so of several streams:
    each round claims from every stream that still has own entries unclaimed,
    a share of the batch from each, in one pipeline, and settles what it
    claimed together (one transaction). What is left at the end (present, but
    claimed by another task or recovery meanwhile) is settled here as well
    (:func:`_settle_claimed_elsewhere`): after waiting for the other settler's
    lock it is usually gone (a DUPLICATE without a query), or, if that settler
    died, the row.
    """
    settings, client = services.settings, services.redis
    outcomes: dict[str, str] = {}
    entries: list[OrderEntry] = []
    for n, payload in enumerate(payloads):
        try:
            entries.append(OrderEntry.from_payload(payload))
        except MalformedEntry as exc:  # its Stream entry, if any, is recovered from there
            log.error("malformed order task payload %r: %s", payload, exc)
            order_id = payload.get("orderId") if isinstance(payload, dict) else None
            outcomes[str(order_id) if order_id is not None else f"#{n}"] = REJECTED
    size = settings.order_settle_batch
    waiting: dict[order_stream.Ref, OrderEntry] = {}
    settled: dict[OrderEntry, str] = {}
    for entry in entries:
        if entry.stream_id is not None and size > 1:
            waiting[order_stream.ref(settings, entry)] = entry
        else:
            settled[entry] = settle_order(services, entry)
    streams = list(dict.fromkeys(order_stream.stream_of(settings, e) for e in waiting.values()))
    share = max(1, -(-size // max(1, len(streams))))  # each stream's part of one batch
    for _ in range(len(waiting) // share + 2):
        own = {s: [sid for key, sid in waiting if key == s.key] for s in streams}
        streams = [s for s in streams if own[s]]
        if not streams:
            break
        present, claimed = order_stream.claim_for(client, {s: (own[s], share) for s in streams})
        for stream in streams:
            for sid in own[stream]:
                if (stream.key, sid) not in present:
                    settled[waiting.pop((stream.key, sid))] = DUPLICATE
        batch: list[OrderEntry] = []
        for stream, items in claimed.items():
            batch += order_stream.parse_entries(client, settings, stream, items)[0]
        others: Counter[str] = Counter()
        for other, outcome in settle_orders(services, batch).items() if batch else ():
            where = order_stream.ref(settings, other)
            if where in waiting:
                settled[waiting.pop(where)] = outcome
            else:
                others[outcome] += 1
        _count(ORDER_BATCH_SETTLED, "outcome", others)
        streams = [s for s in streams if _may_claim_more(s, claimed.get(s), waiting, share)]
    settled.update(_settle_claimed_elsewhere(services, waiting, size))
    outcomes.update((str(entry.order_id), outcome) for entry, outcome in settled.items())
    return outcomes


def _count(metric: Any, label: str, counts: Counter[str]) -> None:
    """Add a batch's outcomes to a labelled counter: one increment per outcome, not per order."""
    for value, n in counts.items():
        metric.labels(**{label: value}).inc(n)


def _may_claim_more(
    stream: order_stream.Stream,
    claimed: list | None,
    waiting: dict[order_stream.Ref, OrderEntry],
    share: int,
) -> bool:
    """Whether another claim on ``stream`` can find own entries nobody took yet.

    Not when it gave fewer than asked (nothing unclaimed is left), nor when
    every own entry left is older than the last one claimed (they are someone
    else's): the own entries left are then settled as claimed elsewhere.
    """
    if not claimed or len(claimed) < share:
        return False
    last = order_stream.stream_id_key(claimed[-1][0])
    return any(key == stream.key and order_stream.stream_id_key(sid) > last for key, sid in waiting)


def _settle_claimed_elsewhere(
    services: Services, waiting: dict[order_stream.Ref, OrderEntry], size: int
) -> dict[OrderEntry, str]:
    """Settle own entries another settler claimed: usually it is settling them right now.

    Those whose user lock is free are settled here (group commit); for the
    others, wait for one of their locks (the other settler holds its whole
    batch's locks until its commit, then releases them together), and look
    again: by then its entries are gone from the Stream, DUPLICATEs without a
    database query each. If that settler died, its locks expire and the
    entries are settled here. After a few rounds, the blocking one-order path.
    """
    settings, client = services.settings, services.redis
    outcomes: dict[OrderEntry, str] = {}
    for _ in range(5):
        if not waiting:
            return outcomes
        present = order_stream.still_present(client, [*waiting])
        for r in [r for r in waiting if r not in present]:
            outcomes[waiting.pop(r)] = DUPLICATE
        rest = list(waiting.values())
        for start in range(0, len(rest), size):
            for entry, outcome in settle_free(services, rest[start : start + size]).items():
                outcomes[entry] = outcome
                waiting.pop(order_stream.ref(settings, entry), None)
        if waiting:
            busy = next(iter(waiting.values()))
            lock = RLock(
                client, LOCK_KEY.format(user_id=busy.user_id), settings.order_lock_lease_ms
            )
            if not lock.acquire(blocking=True, wait_timeout=LOCK_WAIT_SECONDS):
                raise LockError(f"order lock of user {busy.user_id} busy for {LOCK_WAIT_SECONDS}s")
            _release([lock])
    rest = list(waiting.values())
    for start in range(0, len(rest), size):
        outcomes.update(settle_orders(services, rest[start : start + size]))
    return outcomes


@shared_task(bind=True, name=TASK_NAME, acks_late=True, max_retries=MAX_RETRIES)
def create_voucher_order(self, payload: dict | list) -> str | dict[str, str]:  # type: ignore[no-untyped-def]
    """Persist one seckill reservation, or each of a list of them (idempotent per order).

    The list (one message per micro-batch, what the web sends) returns the
    outcome of each order by its id, so Flower shows both the ids (args) and
    what became of them (result); a retry sends the whole list again, which is
    harmless: every order already settled is a DUPLICATE without the database.
    """
    started = time.perf_counter()
    try:
        if isinstance(payload, list):
            outcomes = run_batch_task(self.app.services, payload)
            _count(ORDER_TASKS, "result", Counter(outcomes.values()))
            return outcomes
        outcome = run_order_task(self.app.services, payload)
    except RETRYABLE as exc:
        if self.request.retries >= MAX_RETRIES:
            ORDER_TASKS.labels(result="failed").inc()
            log.error("order task gave up after %d retries: %s", self.request.retries, exc)
            raise  # the Stream entry remains; recovery settles it
        ORDER_TASKS.labels(result="retried").inc()
        countdown = get_exponential_backoff_interval(
            BACKOFF_FACTOR, self.request.retries, BACKOFF_MAX, full_jitter=True
        )
        raise self.retry(exc=exc, countdown=max(countdown, 0.2)) from exc
    except DBAPIError as exc:  # not an outage: a bug or a constraint we did not expect
        ORDER_TASKS.labels(result="failed").inc()
        log.exception("order task failed: %s", exc)
        raise
    finally:
        with contextlib.suppress(Exception):
            ORDER_TASK_SECONDS.observe(time.perf_counter() - started)
    ORDER_TASKS.labels(result=outcome).inc()
    return outcome
