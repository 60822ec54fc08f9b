"""``flask orders replay``: dead letters back into the orders Stream, once.

An entry goes to its voucher's dead-letter stream ``stream.orders.dead:{<voucherId>}``
when it failed too often or its outcome could not change (see
:mod:`cache.order_stream`). Once an operator fixed the
cause (restored the database stock, re-created the voucher, fixed a bug), the
reservation still has to become its row: replay moves it back to its voucher's
Stream as a new entry (the same slot), where the tasks' batches and beat's recovery settle it like any
other, and sends its order task so that it does not wait for beat.

Per dead letter, atomically (one Lua script, :func:`cache.order_stream.replay_dead_letter`):
its order already a row (same id, user and voucher) -> the dead letter is only
removed; else it is removed AND added back to the Stream. The removal decides,
so two replays never add one entry twice, and a replay killed midway leaves each
entry either still a dead letter or back in the Stream, never both, never
neither. Run it again to finish. The dead letters are read from the stream of
every seckill voucher of the database, and from the single ``stream.orders.dead``
of earlier versions while it exists (a single Redis). Before an entry goes back,
its voucher is marked for recovery (:func:`cache.stream_vouchers.linger`), so
an entry of a sale ended long ago is read all the same.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import select

from cache import order_stream, stream_vouchers
from cache.order_stream import MalformedEntry, OrderEntry, Stream
from models.entities import VoucherOrder
from services import Services

from .order_dispatch import CelerySender

log = logging.getLogger(__name__)

REPLAYED = "replayed"  # back in the Stream
REMOVED = "removed"  # its order was a row already
UNKNOWN = "unknown"  # no such dead letter (never was, or replayed already)
KEPT = "kept"  # malformed: nothing to replay, left for an operator


@dataclass(frozen=True)
class Replay:
    """What replay did with one dead letter."""

    dead_id: str
    action: str
    detail: str
    entry: OrderEntry | None = None  # with its new Stream id when REPLAYED

    def line(self) -> str:
        """One printable line."""
        return f"{self.dead_id}: {self.action}: {self.detail}"


def _describe(entry: OrderEntry) -> str:
    return f"order {entry.order_id} (user {entry.user_id}, voucher {entry.voucher_id})"


def _rows_of(svc: Services, entries: list[OrderEntry]) -> set[tuple[int, int, int]]:
    """(order id, user, voucher) of the rows among ``entries``' order ids."""
    if not entries:
        return set()
    query = select(VoucherOrder.id, VoucherOrder.user_id, VoucherOrder.voucher_id).where(
        VoucherOrder.id.in_(sorted({e.order_id for e in entries}))
    )
    with svc.db.session() as session:
        return {(int(a), int(b), int(c)) for a, b, c in session.execute(query)}


def _dead_letters(svc: Services) -> list[tuple[Stream, str, dict]]:
    """Every dead letter: (the stream it is of, its id, its fields), oldest stream first."""
    client, settings = svc.redis, svc.settings
    streams = [
        order_stream.voucher_stream(settings, v) for v in stream_vouchers.all_vouchers(svc.db)
    ]
    streams = order_stream.legacy_of(client, settings) + streams
    return [
        (stream, sid, fields)
        for stream in streams
        for sid, fields in order_stream.iter_stream(client, stream.dead)
    ]


def replay_dead_letters(svc: Services, wanted: list[str] | None) -> list[Replay]:
    """Replay the dead letters named in ``wanted`` (None = all of them), in that order.

    A name is a dead letter's id in its dead-letter stream, or the id its entry
    had in the orders Stream (its ``sourceId``: what the worker log names). Ids
    are unique per stream only: a name several dead letters answer to names
    them all.
    """
    client, settings = svc.redis, svc.settings
    dead = _dead_letters(svc)
    by_name: dict[str, list[tuple[Stream, str, dict]]] = {}
    for letter in dead:
        for name in dict.fromkeys([letter[2].get("sourceId") or letter[1], letter[1]]):
            by_name.setdefault(name, []).append(letter)
    if wanted is None:
        names = [sid for _, sid, _ in dead]
        chosen = {sid: [] for sid in names}
        for letter in dead:
            chosen[letter[1]].append(letter)
    else:
        names = list(dict.fromkeys(wanted))
        chosen = {name: by_name.get(name, []) for name in names}
    found: list[tuple[str, Stream, str, OrderEntry]] = []
    results: dict[str, list[Replay]] = {}
    taken: set[tuple[str, str]] = set()  # (dead-letter stream, id): each replayed once
    for name in dict.fromkeys(names):
        if not chosen[name]:
            results[name] = [Replay(name, UNKNOWN, "not a dead letter of any orders stream")]
            continue
        for stream, dead_id, fields in chosen[name]:
            if (stream.dead, dead_id) in taken:
                continue
            taken.add((stream.dead, dead_id))
            try:
                entry = OrderEntry.from_fields(fields, None)
                if stream.voucher_id not in (None, entry.voucher_id):
                    raise MalformedEntry(f"voucherId {entry.voucher_id} in {stream.dead}")
                found.append((name, stream, dead_id, entry))
            except MalformedEntry as exc:
                results.setdefault(name, []).append(Replay(dead_id, KEPT, f"malformed ({exc})"))
    rows = _rows_of(svc, [entry for *_, entry in found])
    stream_vouchers.linger(client, settings, [e.voucher_id for *_, e in found])
    for name, stream, dead_id, entry in found:
        is_row = (entry.order_id, entry.user_id, entry.voucher_id) in rows
        new_id = order_stream.replay_dead_letter(
            client, settings, stream, dead_id, None if is_row else entry
        )
        if new_id is None:
            result = Replay(dead_id, UNKNOWN, "replayed meanwhile by another replay")
        elif is_row:
            result = Replay(dead_id, REMOVED, f"{_describe(entry)} is a row already")
        else:
            again = OrderEntry(entry.order_id, entry.user_id, entry.voucher_id, new_id)
            result = Replay(dead_id, REPLAYED, f"{_describe(entry)} is {new_id} again", again)
        results.setdefault(name, []).append(result)
    return [result for name in dict.fromkeys(names) for result in results.get(name, [])]


def dispatch_replayed(celery_app: Celery, task_name: str, results: list[Replay]) -> str:
    """Send the order tasks of the replayed entries (best effort); what to print about it."""
    replayed = [r.entry for r in results if r.action == REPLAYED and r.entry is not None]
    if not replayed:
        return ""
    send = CelerySender(celery_app, task_name)
    try:
        send([(contextvars.copy_context(), entry.to_payload()) for entry in replayed])
    except Exception as exc:  # the entries are in the Stream: recovery settles them
        log.warning("replayed order tasks not sent: %s", exc)
        return f"order tasks not sent ({exc}): beat's recovery settles the entries"
    finally:
        send.close()
    return f"{len(replayed)} order tasks sent"


def summary(results: list[Replay]) -> tuple[str, bool]:
    """The last line the command prints, and whether every name was replayed or removed."""
    counts = {a: sum(r.action == a for r in results) for a in (REPLAYED, REMOVED, UNKNOWN, KEPT)}
    return ", ".join(f"{a} {n}" for a, n in counts.items()), not (counts[UNKNOWN] or counts[KEPT])
