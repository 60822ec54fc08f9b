"""The orders verdict of a load test: oversell, lost and duplicate orders, exactly.

The audit itself is the seckill code's own (:func:`web.orders.verify_orders`:
Redis stock and buyers against rows, Stream and dead letters). On top of it
this compares three independent counts per run, which must be equal:

* what the clients were told: 200 answers (``successes``);
* what the gate sold: stock taken in Redis (``reservations``);
* what the database holds: order rows, and stock taken in the database.

``oversell``: orders (or reservations) beyond a voucher's initial stock, plus
orders nobody reserved (the audit's phantoms). ``lost``: a success or a
reservation without a row after the backlog drained (unsettled ones count: a
run that cannot drain has lost them as far as its users know).
``duplicates``: two rows for one (user, voucher), one order id handed out
twice, or one user told "ok" twice for one voucher.

wrk stops mid-flight: up to one request per connection may have been served
without wrk reading the answer, so for wrk ``reservations - successes`` may be
up to ``unobserved_allowance`` (the connection count); locust reads every answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services import Services


@dataclass
class OrderVerdict:
    """Counts and problems; ``ok`` is False on any oversell, loss or duplicate."""

    successes: int
    reservations: int
    rows: int
    db_deducted: int
    initial_stock: int
    oversell: int = 0
    lost: int = 0
    duplicates: int = 0
    unsettled: int = 0
    problems: list[str] = field(default_factory=list)
    audit_lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.oversell or self.lost or self.duplicates or self.problems)


def judge(
    svc: Services,
    initial_stock: dict[int, int],
    successes: int,
    client_duplicates: int = 0,
    unobserved_allowance: int = 0,
) -> OrderVerdict:
    """Audit the stack's orders after the load (and the drain); see the module doc."""
    from web.orders import verify_orders

    audit = verify_orders(svc)
    by_id = {a.voucher_id: a for a in audit.vouchers}
    verdict = OrderVerdict(
        successes=successes,
        reservations=0,
        rows=0,
        db_deducted=0,
        initial_stock=sum(initial_stock.values()),
        duplicates=client_duplicates,
        unsettled=audit.unsettled,
        audit_lines=audit.lines(),
    )
    for voucher_id, initial in initial_stock.items():
        a = by_id.get(voucher_id)
        if a is None:
            verdict.problems.append(f"voucher {voucher_id} missing from the audit")
            continue
        reserved = initial - a.redis_stock if a.redis_stock is not None else a.redis_buyers
        db_taken = initial - (a.db_stock if a.db_stock is not None else initial)
        verdict.reservations += reserved
        verdict.rows += a.db_orders
        verdict.db_deducted += db_taken
        verdict.oversell += max(0, max(a.db_orders, reserved, db_taken) - initial) + a.phantom
        verdict.duplicates += a.duplicates
        verdict.lost += max(a.lost, reserved - a.db_orders, 0)
        if reserved != a.redis_buyers:
            verdict.problems.append(
                f"voucher {voucher_id}: Redis stock taken {reserved} != buyers {a.redis_buyers}"
            )
        if db_taken != a.db_orders:
            verdict.problems.append(
                f"voucher {voucher_id}: database stock taken {db_taken} != rows {a.db_orders}"
            )
        verdict.problems.extend(f"voucher {voucher_id}: {p}" for p in a.problems)
    if audit.malformed:
        verdict.problems.append(f"{audit.malformed} malformed Stream entries")
    if successes > verdict.reservations:
        verdict.lost += successes - verdict.reservations
        verdict.problems.append(
            f"clients got {successes} successes but Redis sold {verdict.reservations}"
        )
    unseen = verdict.reservations - successes
    if unseen > unobserved_allowance:
        verdict.problems.append(
            f"Redis sold {verdict.reservations} but clients saw only {successes} successes "
            f"(allowed unobserved: {unobserved_allowance})"
        )
    if verdict.unsettled:
        verdict.problems.append(f"{verdict.unsettled} reservations still unsettled")
    return verdict
