"""``flask orders replay``: dead letters back into the orders Stream, once.

An entry goes to ``stream.orders.dead`` when it failed too often or its outcome
could not change (see :mod:`cache.order_stream`). Once an operator fixed the
cause (restored the database stock, re-created the voucher, fixed a bug), the
reservation still has to become its row: replay moves it back to the Stream as
a new entry, where the tasks' batches and beat's recovery settle it like any
other, and sends its order task so that it does not wait for beat.

Per dead letter, atomically (one Lua script, :func:`cache.order_stream.replay_dead_letter`):
its order already a row (same id, user and voucher) -> the dead letter is only
removed; else it is removed AND added back to the Stream. The removal decides,
so two replays never add one entry twice, and a replay killed midway leaves each
entry either still a dead letter or back in the Stream, never both, never
neither. Run it again to finish.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import select

from cache import order_stream
from cache.order_stream import MalformedEntry, OrderEntry
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


def replay_dead_letters(svc: Services, wanted: list[str] | None) -> list[Replay]:
    """Replay the dead letters named in ``wanted`` (None = all of them), in that order.

    A name is a dead letter's id in the dead-letter stream, or the id its entry
    had in the orders Stream (its ``sourceId``: what the worker log names).
    """
    client, settings = svc.redis, svc.settings
    dead = list(order_stream.iter_stream(client, settings.order_dead_letter_stream))
    by_name = {f["sourceId"]: (sid, f) for sid, f in dead if f.get("sourceId")}
    by_name.update({sid: (sid, f) for sid, f in dead})
    names = [sid for sid, _ in dead] if wanted is None else list(dict.fromkeys(wanted))
    found: list[tuple[str, OrderEntry]] = []
    results: dict[str, Replay] = {}
    for name in names:
        if name not in by_name:
            results[name] = Replay(name, UNKNOWN, f"not in {settings.order_dead_letter_stream}")
            continue
        dead_id, fields = by_name[name]
        try:
            found.append((name, OrderEntry.from_fields(fields, None)))
        except MalformedEntry as exc:
            results[name] = Replay(dead_id, KEPT, f"malformed ({exc})")
    rows = _rows_of(svc, [entry for _, entry in found])
    for name, entry in found:
        dead_id = by_name[name][0]
        is_row = (entry.order_id, entry.user_id, entry.voucher_id) in rows
        new_id = order_stream.replay_dead_letter(
            client, settings, dead_id, None if is_row else entry
        )
        if new_id is None:
            results[name] = Replay(dead_id, UNKNOWN, "replayed meanwhile by another replay")
        elif is_row:
            results[name] = Replay(dead_id, REMOVED, f"{_describe(entry)} is a row already")
        else:
            again = OrderEntry(entry.order_id, entry.user_id, entry.voucher_id, new_id)
            results[name] = Replay(
                dead_id, REPLAYED, f"{_describe(entry)} is {new_id} again", again
            )
    return [results[name] for name in names]


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
