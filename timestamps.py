"""Instants as the API writes and reads them: ISO-8601 with the UTC offset.

The database holds naive UTC ``DATETIME`` values (:func:`models.entities.utcnow`).
A browser parses a timestamp without an offset as *its own* local time, so
every timestamp we write in JSON goes through :func:`iso_instant`: the instant
shown in the deployment's zone (``settings.zone``, HMDP_TIMEZONE) with its
offset, e.g. ``2024-05-01T20:00:00+08:00``, or ``...Z`` when the offset is zero.
Any reader anywhere gets the same instant; an operator reads the local time.

:func:`parse_instant` is the way back for input (a seckill sale window): a
string with an offset means that instant; one without is a wall-clock time in
the deployment's zone, what an admin of that deployment means by "10:00".

Both cache/ (the shop JSON it stores) and web/ use this module; it imports
nothing of ours, so neither layer reaches into the other for it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

_ZERO = timedelta(0)
# A UTC offset is less than a day: wall times this far from datetime's ends convert safely.
_FIRST = datetime.min + timedelta(days=1)
_LAST = datetime.max - timedelta(days=1)


class InstantOutOfRange(ValueError):
    """An ISO-8601 time so close to year 1 or 9999 that converting it could overflow."""


def iso_instant(moment: datetime | None, zone: tzinfo) -> str | None:
    """``moment`` (naive = UTC, as stored) in ``zone`` as ISO-8601 seconds with the offset.

    None stays None (a column that was never set, e.g. a pay time).
    """
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(zone)
    if local.utcoffset() == _ZERO:
        return local.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    return local.isoformat(timespec="seconds")


def parse_instant(text: str, zone: tzinfo) -> datetime:
    """An ISO-8601 time as naive UTC (the database's form); ValueError if it is not one.

    Without an offset the time is read in ``zone``. A wall time that occurs
    twice (a DST fold) means its first occurrence; one skipped by a DST gap
    is read with the offset before the gap (zoneinfo's ``fold=0`` rule).
    The range is checked before the conversion: :class:`InstantOutOfRange`
    (a ValueError) for a time within a day of datetime's ends, which an
    offset could push beyond them (an OverflowError otherwise).
    """
    moment = datetime.fromisoformat(text.strip())
    if not _FIRST <= moment.replace(tzinfo=None) <= _LAST:
        raise InstantOutOfRange(f"{text[:40]!r} is out of range")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC).replace(tzinfo=None)
