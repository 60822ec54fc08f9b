"""Reconciliation: rebuild a seckill voucher's gate state in Redis from the database and the Stream.

Redis can come back with less than it acknowledged (a host crash inside the AOF
fsync window, a failover to a lagging replica, a restore of an older snapshot,
an operator's DEL). What it loses breaks the gate's bookkeeping:

* a buyer missing from ``seckill:order:{v}`` can order again: 200 with a NEW id
  that never becomes a row (the settle code calls it a drift event and records
  it here: :func:`record_drift`);
* a stock too high sells units the database no longer has (the guard refuses
  them: 200 answers that end as oversell dead letters); too low never sells some;
* an id counter ``icr:order:{<slot tag>}:<second>`` below what it already issued
  repeats ids while hosts still name that second (their reservations are rejected:
  the id belongs to another order).

The truth is the database (rows, stock) plus the reservations not settled yet:
the entries of the voucher's orders Stream and of its dead-letter stream (every
200 answer is one of those three; while the single stream of earlier versions
exists on a single Redis, its entries and dead letters count too).
:func:`reconcile` makes Redis agree with it, per voucher, in ONE script call
against the live keys (``lua/seckill_repair.lua``):

* buyers ⊇ the users of the rows and of the unsettled entries (added, never
  removed: a buyer too many only refuses);
* ``seckill:orderid:{v}``: the row's id for a user with a row, else the entry's;
* stock = database stock - users with an unsettled entry and no row - what the
  gate sold since the snapshot below (the live stock's fall since then) + what of
  that the database already holds (see below);
* each id counter of the seconds web hosts may still name (now ± the tolerated clock
  skew, cache/ids.py) ≥ the highest count issued by it (older counters are never
  INCRed again).

Correct while the gate sells and workers settle, because of the order of reads:
dead letters, then the Streams in pages, then per voucher ONE MULTI (its stock,
buyers, ids and its Stream's tail since the pages, in its slot; the legacy
stream's tail too while it exists: "the snapshot"), the dead letters again, then
ONE database transaction (per voucher one statement: stock and rows), then
the repair script.

* An entry settled after the Stream reads is pending there and a row in the
  database: deduplicated by order id, it is not subtracted. The database's stock
  and rows of a voucher are one statement's, so they agree (a settle writes both
  in one transaction).
* An entry moved between the Stream and the dead letters is seen at least once
  (deduplicated by order id).
* A reservation after the snapshot is in the live stock's fall. If it also
  settled before the database read, the database stock lacks its unit too: its
  row's user is not among the snapshot's buyers but is now a buyer with that
  row's id (the script checks, before it writes), so it is counted once, not
  twice. A user Redis lost is not a buyer now: never taken for one of these.

The only stock writers are the gate (DECR), the load of a missing stock
(:data:`MISSING`, this module too) and this repair, which runs under a
per-voucher lock.

Loading a voucher whose stock key is missing (the order route after the gate
said "unknown", ``flask seed``) is the same repair in :data:`MISSING` mode:
the stock is written only if absent, minus the unsettled reservations, never
the database stock as it is (that would sell the pending units again).

The drift found per voucher (buyers added + ids fixed + stock moved) is kept
in ``seckill:reconcile`` for :data:`DRIFT_HOLD_MS` and exported as the gauge
``hmdp_seckill_drift{voucher}`` (web/metrics.py), alerted on.

The beat job runs :meth:`Reconciler.run_if_lost`: the reconciliation reads every
row and buyer of a live sale, O(its orders), so it runs only when Redis may have
lost state (another Redis process than the last full pass saw, or a voucher's
keys deleted) and at least every ``HMDP_SECKILL_RECONCILE_FULL_S``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from sqlalchemy import func, select

from models.entities import SeckillVoucher, VoucherOrder, utcnow
from models.session import Database
from settings import Settings

from .ids import CLOCK_SKEW_S, COUNT_BITS, ID_KEY_TTL, MAX_COUNT, counter_key, id_base, split
from .locks import RLock, acquire_all, release_all
from .order_stream import (
    MalformedEntry,
    OrderEntry,
    Stream,
    as_items,
    iter_stream,
    legacy_of,
    voucher_stream,
)
from .scripts import load_script, run_each
from .seckill import ID_PREFIX, epoch_ms, order_id_key, order_set_key, stock_key, window_key
from .stream_vouchers import recent_vouchers

log = logging.getLogger(__name__)

ALWAYS = "always"  # correct the stock whatever it is (beat, `flask orders reconcile`)
MISSING = "missing"  # write the stock only where it is absent (loading a voucher)
LOCK_KEY = "lock:seckill-reconcile:{voucher_id}"
DRIFT_KEY = "seckill:drift:{{{voucher_id}}}"  # the voucher's tag (cache/seckill.py)
FOUND_KEY = "seckill:reconcile"
SEEN_KEY = "seckill:reconcile:seen"  # hash: the Redis the last full pass ran on, and when
DRIFT_HOLD_MS = 15 * 60 * 1000  # a repair stays visible in the gauge this long


def drift_key(voucher_id: int) -> str:
    """Drift events of a voucher: hash issued order id -> who got it and what their row is."""
    return DRIFT_KEY.format(voucher_id=voucher_id)


# --- drift events (written by the settle code, read by the audit) -------------------------


@dataclass(frozen=True)
class DriftRecord:
    """An order id answered 200 that will never be a row: the user's row has another id."""

    issued_id: int
    user_id: int
    row_id: int
    at_ms: int


def record_drift(
    client: redis.Redis, voucher_id: int, user_id: int, issued_id: int, row_id: int
) -> None:
    """Keep a drift event and point the buyer's records at their real order, in one MULTI.

    Idempotent (a redelivered entry keeps its first record). The buyer's issued
    id becomes the row's, so a retried order is told the order that exists. The
    stock is left as it is: whether the extra reservation took a unit that was
    really there depends on what Redis lost, and reconciliation decides that.
    """
    record = {"userId": user_id, "orderId": str(row_id), "at": int(time.time() * 1000)}
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(drift_key(voucher_id), str(issued_id), json.dumps(record))
    pipe.hset(order_id_key(voucher_id), str(user_id), str(row_id))
    pipe.sadd(order_set_key(voucher_id), str(user_id))
    pipe.execute()


def drift_records(client: redis.Redis, voucher_id: int) -> list[DriftRecord]:
    """The drift events of a voucher, oldest first."""
    records = []
    for issued, raw in client.hgetall(drift_key(voucher_id)).items():
        data = json.loads(raw)
        records.append(
            DriftRecord(int(issued), int(data["userId"]), int(data["orderId"]), int(data["at"]))
        )
    return sorted(records, key=lambda r: (r.at_ms, r.issued_id))


# --- reconciliation ------------------------------------------------------------------------


@dataclass
class VoucherRepair:
    """What reconciling one voucher found and changed."""

    voucher_id: int
    stock_before: int | None = None
    stock_after: int | None = None
    buyers_added: int = 0
    ids_fixed: int = 0
    sold: bool = False  # rows or unsettled entries exist (a missing stock was lost, not new)
    skipped: str | None = None

    @property
    def drift(self) -> int:
        """How far Redis was from the truth: buyers and ids repaired, units of stock moved."""
        if self.stock_before is not None and self.stock_after is not None:
            moved = abs(self.stock_after - self.stock_before)
        else:
            moved = int(self.stock_after is not None and self.sold)
        return self.buyers_added + self.ids_fixed + moved

    def line(self) -> str:
        """One printable line (``flask orders reconcile``)."""
        if self.skipped:
            return f"voucher {self.voucher_id}: skipped ({self.skipped})"
        return (
            f"voucher {self.voucher_id}: stock {self.stock_before} -> {self.stock_after}, "
            f"buyers added {self.buyers_added}, ids fixed {self.ids_fixed}, drift {self.drift}"
        )


@dataclass
class ReconcileReport:
    """One reconciliation run."""

    vouchers: list[VoucherRepair] = field(default_factory=list)
    counters_raised: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (was, now)
    full: str | None = "asked for"  # why every voucher was read; None: the cheap checks passed

    @property
    def drift(self) -> int:
        """Everything repaired in this run (0 = Redis agreed with the truth)."""
        raised = sum(now - was for was, now in self.counters_raised.values())
        return sum(v.drift for v in self.vouchers) + raised

    def lines(self) -> list[str]:
        """What ``flask orders reconcile`` prints."""
        out = [v.line() for v in self.vouchers]
        out += [f"id counter {k}: {was} -> {now}" for k, (was, now) in self.counters_raised.items()]
        return out + [f"drift repaired: {self.drift}"]

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly, for the beat job's result and logs."""
        return {
            "vouchers": {v.voucher_id: (v.skipped or v.drift) for v in self.vouchers},
            "counters_raised": self.counters_raised,
            "drift": self.drift,
            "full": self.full,
        }


@dataclass
class _Unsettled:
    """Reservations not yet rows, read around the snapshot (see the module doc)."""

    by_voucher: dict[int, dict[int, OrderEntry]] = field(default_factory=dict)  # v -> oid -> e
    order_ids: set[int] = field(default_factory=set)  # every voucher's (for the id counters)

    def add(self, items: Iterable[tuple[str, dict]], vouchers: set[int]) -> str | None:
        """Take the reservations among Stream ``items``; returns the last Stream id seen."""
        last = None
        for stream_id, fields in items:  # ids are unique per stream; entries go by order id
            last = stream_id
            try:
                entry = OrderEntry.from_fields(fields, stream_id)
            except MalformedEntry:
                continue  # dead-lettered by whoever reads it; not a reservation
            self.order_ids.add(entry.order_id)
            if entry.voucher_id in vouchers:
                self.by_voucher.setdefault(entry.voucher_id, {})[entry.order_id] = entry
        return last


def _after(stream_id: str | None) -> str:
    """XRANGE's start for the entries after ``stream_id`` (all of them for None)."""
    return "-" if stream_id is None else "(" + stream_id


@dataclass(frozen=True)
class Snapshot:
    """One voucher's gate state at one instant (see the module doc)."""

    stock: str | None  # seckill:stock:{v} (None: absent)
    tail: list[tuple[str, dict]]  # the entries its streams got since the pages
    buyers: set[str]  # seckill:order:{v}
    issued: dict[str, str]  # seckill:orderid:{v}: user -> order id


def snapshot(client: redis.Redis, voucher_id: int, after: dict[str, str | None]) -> Snapshot:
    """One voucher's stock, buyers, ids and the entries its streams got since ``after``
    (key -> the last id read; None: all), in ONE MULTI: the voucher's slot (and the
    legacy stream's, on a single Redis only)."""
    pipe = client.pipeline(transaction=True)
    pipe.get(stock_key(voucher_id))
    pipe.smembers(order_set_key(voucher_id))
    pipe.hgetall(order_id_key(voucher_id))
    for key, last in after.items():
        pipe.xrange(key, min=_after(last), max="+")
    stock, buyers, issued, *tails = pipe.execute()
    tail = [item for tail in tails for item in as_items(tail)]
    return Snapshot(stock, tail, set(buyers), dict(issued))


def _id_seconds(now: float) -> tuple[int, int]:
    """The first and last epoch second whose id counters web hosts may still INCR."""
    return int(now) - CLOCK_SKEW_S, int(now) + CLOCK_SKEW_S


def _count_floors(ids: Iterable[int], seconds: tuple[int, int]) -> dict[str, int]:
    """The highest count per counter key among ``ids`` made within ``seconds``."""
    floors: dict[str, int] = {}
    for order_id in ids:
        second, slot, count = split(order_id)
        if seconds[0] <= second <= seconds[1]:
            key = counter_key(ID_PREFIX, second, slot)
            floors[key] = max(floors.get(key, 0), count)
    return floors


@dataclass
class _Voucher:
    """The database's view of one voucher, from one transaction."""

    voucher_id: int
    stock: int
    begin_ms: int
    end_ms: int
    rows: dict[int, int]  # user id -> order id


def _read_database(
    db: Database, voucher_ids: list[int], seconds: tuple[int, int]
) -> tuple[dict[int, _Voucher], dict[str, int]]:
    """Each voucher's stock and rows, and the counters' highest counts: ONE transaction.

    The counts: per id counter of ``seconds`` (:func:`_id_seconds`), the
    highest count among every voucher's rows (vouchers on one slot share it).

    A voucher's stock and rows come from ONE statement, so they agree on every
    backend (a settle writes both in one transaction; SQLite's driver runs each
    SELECT outside a transaction, where two reads could straddle a settle).
    """
    found: dict[int, _Voucher] = {}
    floors: dict[str, int] = {}
    with db.session() as session:
        for v in voucher_ids:
            rows = session.execute(
                select(
                    SeckillVoucher.stock,
                    SeckillVoucher.begin_time,
                    SeckillVoucher.end_time,
                    VoucherOrder.user_id,
                    VoucherOrder.id,
                )
                .outerjoin(VoucherOrder, VoucherOrder.voucher_id == SeckillVoucher.voucher_id)
                .where(SeckillVoucher.voucher_id == v)
            ).all()
            if rows:
                stock, begin, end = rows[0][:3]
                found[v] = _Voucher(
                    v,
                    int(stock),
                    epoch_ms(begin),
                    epoch_ms(end),
                    {int(user): int(oid) for *_, user, oid in rows if oid is not None},
                )
        made_by = VoucherOrder.id.op(">>")(COUNT_BITS).label("made_by")  # second and slot
        tops = session.execute(
            select(made_by, func.max(VoucherOrder.id.op("&")(MAX_COUNT)))
            .where(
                VoucherOrder.id >= id_base(seconds[0], 0),
                VoucherOrder.id < id_base(seconds[1] + 1, 0),
            )
            .group_by(made_by)
        ).all()
        floors = _count_floors((int(g) << COUNT_BITS | int(top) for g, top in tops), seconds)
    return found, floors


def live_vouchers(db: Database) -> list[int]:
    """Seckill vouchers whose sale has not ended (the ones whose gate state matters)."""
    with db.session() as session:
        return list(
            session.scalars(
                select(SeckillVoucher.voucher_id)
                .where(SeckillVoucher.end_time > utcnow())
                .order_by(SeckillVoucher.voucher_id)
            )
        )


def redis_identity(client: redis.Redis | redis.RedisCluster) -> str:
    """The run ids of the Redis processes that hold the gate state, sorted and joined.

    Redis loses acknowledged writes only by being another process than the one
    that took them: a restart (from an AOF missing its last second, or from an
    older snapshot), a failover to a replica. Each has a new run id.
    """
    if isinstance(client, redis.RedisCluster):
        infos = list(client.info("server", target_nodes=redis.RedisCluster.PRIMARIES).values())
    else:
        infos = [client.info("server")]
    return ",".join(sorted(str(info["run_id"]) for info in infos))


class Reconciler:
    """Reconciles vouchers for one Redis client and database (create once per process)."""

    def __init__(self, client: redis.Redis, settings: Settings, db: Database):
        self.client = client
        self.settings = settings
        self.db = db
        self.repair_script = load_script(client, "seckill_repair")
        self.floor_script = load_script(client, "counter_floor")
        self.probe_script = load_script(client, "seckill_probe")

    def run_if_lost(self, full_every_s: int) -> ReconcileReport:
        """The beat's pass: :meth:`run` over every live voucher, only if Redis may have lost state.

        Why not always: the full pass reads every row and buyer of a live sale,
        and every 30 s in the middle of a big one that takes a worker process,
        the database and Redis for seconds, while the drain needs them. Lost
        state shows cheaply: another Redis process than the last full pass ran
        on (:func:`redis_identity` against :data:`SEEN_KEY`; no record at all
        after a flush), or a voucher whose stock or window is gone or whose
        buyers and issued ids no longer pair up (``lua/seckill_probe.lua``: the
        trace of a deleted key). Whatever else an operator edits by hand, the full
        pass run at least every ``full_every_s`` seconds finds. The identity is
        read before the pass and recorded after it, unless a voucher was busy
        (another reconciliation holds it): then the next pass is a full one too.
        """
        identity = redis_identity(self.client)
        reason = self._why_full(identity, full_every_s)
        if reason is None:
            return ReconcileReport(full=None)
        report = self.run()
        report.full = reason
        if not any(v.skipped == "busy" for v in report.vouchers):
            self.client.hset(SEEN_KEY, mapping={"redis": identity, "at": f"{time.time():.3f}"})
        return report

    def _why_full(self, identity: str, full_every_s: int) -> str | None:
        """Why the beat's pass must read everything, or None when the cheap checks pass."""
        seen = self.client.hgetall(SEEN_KEY)
        if not seen:
            return "no full pass recorded in this Redis"
        if seen.get("redis") != identity:
            return "another Redis process than at the last full pass"
        if time.time() - float(seen.get("at") or 0) >= full_every_s:
            return f"the last full pass is {full_every_s} s old"
        lost = [
            v
            for v, (stock, window, buyers, issued) in self._probe(live_vouchers(self.db))
            if not (stock and window) or buyers != issued
        ]
        return f"gate state deleted: vouchers {lost}" if lost else None

    def _probe(self, voucher_ids: list[int]) -> list[tuple[int, list[int]]]:
        """Each voucher with its ``lua/seckill_probe.lua`` answer: stock, window, buyers, ids."""
        calls = [
            ([stock_key(v), window_key(v), order_set_key(v), order_id_key(v)], [])
            for v in voucher_ids
        ]
        probes = run_each(self.client, self.probe_script, calls) if calls else []
        return list(zip(voucher_ids, probes, strict=True))

    def run(
        self, voucher_ids: list[int] | None = None, *, mode: str = ALWAYS, wait: float = 0.0
    ) -> ReconcileReport:
        """Reconcile ``voucher_ids`` (default: every live voucher); see the module doc.

        A voucher another reconciliation holds is skipped (``wait`` > 0: waited
        for, up to that many seconds, then skipped). In :data:`MISSING` mode a
        voucher whose stock and window are both present is left alone.
        """
        ids = live_vouchers(self.db) if voucher_ids is None else list(voucher_ids)
        report = ReconcileReport()
        locks = {v: RLock(self.client, LOCK_KEY.format(voucher_id=v)) for v in ids}
        if wait > 0:
            held = [lock for lock in locks.values() if lock.acquire(True, wait_timeout=wait)]
        else:
            held = acquire_all(self.client, list(locks.values()))
        try:
            taken = [v for v in ids if locks[v] in held]
            report.vouchers += [VoucherRepair(v, skipped="busy") for v in ids if v not in taken]
            if mode == MISSING:
                taken = self._missing(taken)
            if taken:
                self._reconcile(taken, mode, report)
        finally:
            if held:
                release_all(self.client, held)
        if voucher_ids is None or report.drift:
            self._keep_found(report, replace=voucher_ids is None)
        if report.drift:
            log.warning("seckill state reconciled: %s", report.as_dict())
        return report

    def _missing(self, voucher_ids: list[int]) -> list[int]:
        return [v for v, (stock, window, *_) in self._probe(voucher_ids) if not (stock and window)]

    def _reconcile(self, voucher_ids: list[int], mode: str, report: ReconcileReport) -> None:
        wanted = set(voucher_ids)
        legacy = [s for s in legacy_of(self.client, self.settings) if self.client.exists(s.key)]
        # The ids of every recent voucher's reservations for the counters, not only these.
        others = [v for v in recent_vouchers(self.db, self.settings) if v not in wanted]
        streams = [voucher_stream(self.settings, v) for v in [*voucher_ids, *others]] + legacy
        unsettled = _Unsettled()
        self._dead_letters(streams, unsettled, wanted)
        last = {s.key: unsettled.add(iter_stream(self.client, s.key), wanted) for s in streams}
        seconds = _id_seconds(time.time())
        snapshots: dict[int, Snapshot] = {}
        for v in voucher_ids:
            keys = [voucher_stream(self.settings, v).key, *(s.key for s in legacy)]
            snapshots[v] = snapshot(self.client, v, {key: last[key] for key in keys})
            unsettled.add(snapshots[v].tail, wanted)
        self._dead_letters(streams, unsettled, wanted)
        found, db_floors = _read_database(self.db, voucher_ids, seconds)
        issued: set[int] = set(unsettled.order_ids)
        for v in voucher_ids:
            voucher = found.get(v)
            if voucher is None:
                report.vouchers.append(VoucherRepair(v, skipped="not a seckill voucher"))
                continue
            entries = unsettled.by_voucher.get(v, {})
            report.vouchers.append(self._repair(voucher, entries, snapshots[v], mode, issued))
        self._raise_counters(seconds, db_floors, issued, report)

    def _dead_letters(self, streams: list[Stream], unsettled: _Unsettled, wanted: set[int]) -> None:
        for stream in streams:
            unsettled.add(iter_stream(self.client, stream.dead), wanted)

    def _repair(
        self,
        voucher: _Voucher,
        entries: dict[int, OrderEntry],
        snap: Snapshot,
        mode: str,
        issued: set[int],
    ) -> VoucherRepair:
        v, rows = voucher.voucher_id, voucher.rows
        row_ids = set(rows.values())
        waiting = [e for e in entries.values() if e.order_id not in row_ids]
        takers = {e.user_id for e in waiting if e.user_id not in rows}  # each takes one unit
        members, known_ids = snap.buyers, snap.issued
        issued.update(int(i) for i in known_ids.values())
        # Rows of users the gate did not know at the snapshot: sold after it and settled
        # before the database read, unless Redis lost them (the script tells which).
        newer = [(u, oid) for u, oid in sorted(rows.items()) if str(u) not in members]
        buyers = set(rows) | {e.user_id for e in entries.values()}
        missing = sorted(u for u in buyers if str(u) not in members)
        forced = [(u, oid) for u, oid in sorted(rows.items()) if known_ids.get(str(u)) != str(oid)]
        absent: dict[int, int] = {}
        for e in waiting:
            if e.user_id not in rows and str(e.user_id) not in known_ids:
                absent.setdefault(e.user_id, e.order_id)
        args: list[object] = [
            mode,
            "" if snap.stock is None else snap.stock,
            voucher.stock - len(takers),
            voucher.begin_ms,
            voucher.end_ms,
            len(newer),
            *(x for pair in newer for x in pair),
            len(missing),
            *missing,
            len(forced),
            *(x for pair in forced for x in pair),
            *(x for pair in sorted(absent.items()) for x in pair),
        ]
        keys = [stock_key(v), window_key(v), order_set_key(v), order_id_key(v)]
        before, after, added, fixed = self.repair_script(keys=keys, args=args)
        return VoucherRepair(
            v,
            None if before == "" else int(before),
            None if after == "" else int(after),
            int(added),
            int(fixed),
            sold=bool(rows or entries),
        )

    def _raise_counters(
        self,
        seconds: tuple[int, int],
        db_floors: dict[str, int],
        issued: set[int],
        report: ReconcileReport,
    ) -> None:
        floors = _count_floors(issued, seconds)
        for key, top in db_floors.items():
            floors[key] = max(floors.get(key, 0), top)
        for key, floor in sorted(floors.items()):
            was = int(self.floor_script(keys=[key], args=[floor, ID_KEY_TTL]))
            if was >= 0:
                report.counters_raised[key] = (was, floor)

    def _keep_found(self, report: ReconcileReport, replace: bool) -> None:
        """Record each voucher's drift for the gauge; a repair stays :data:`DRIFT_HOLD_MS`.

        ``replace`` (a run over every live voucher): vouchers no longer live drop out.
        """
        now = int(time.time() * 1000)
        old = self.client.hgetall(FOUND_KEY)
        values: dict[str, str] = {}
        for repair in report.vouchers:
            name = str(repair.voucher_id)
            drift, at = (int(x) for x in old.get(name, "0:0").split(":"))
            if repair.skipped or (repair.drift == 0 and drift and now - at < DRIFT_HOLD_MS):
                if name in old:
                    values[name] = old[name]
            else:
                values[name] = f"{repair.drift}:{now}"
        pipe = self.client.pipeline(transaction=True)
        if replace:
            pipe.delete(FOUND_KEY)
        if values:
            pipe.hset(FOUND_KEY, mapping=values)
        pipe.execute()


def parse_found(found: dict[str, str]) -> dict[int, int]:
    """``seckill:reconcile`` as voucher -> drift (for the gauge, read at scrape time)."""
    return {int(v): int(raw.split(":")[0]) for v, raw in found.items() if v.isdigit()}
