"""Feeds (push model): each user's inbox ``feed:{userId}`` is a ZSET blog id -> time (ms).

Publishing a blog adds its id to every follower's inbox; reading the feed is
*scroll* pagination by score, not page numbers, because new blogs keep arriving
at the top (page numbers would shift and repeat items). A page is
``ZREVRANGEBYSCORE feed max=lastId min=0 LIMIT offset count``; the client sends
back the page's smallest score (``minTime``) as the next ``lastId`` and, as
``offset``, how many items of the page carry exactly that score — those are
the ones to skip, since ``max`` is inclusive. This stays exact when many blogs
share a timestamp (see :func:`scroll`).

Inboxes are bounded: after each push the oldest entries beyond ``inbox_size``
are trimmed (ZREMRANGEBYRANK), so a follower of busy authors holds at most
``inbox_size`` ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

FEED_KEY = "feed:{user_id}"
PUSH_BATCH = 500  # inboxes per pipeline round trip


def feed_key(user_id: int) -> str:
    """The Redis key of ``user_id``'s inbox."""
    return FEED_KEY.format(user_id=user_id)


def push(
    client: redis.Redis,
    follower_ids: Iterable[int],
    blog_id: int,
    score_ms: int,
    inbox_size: int,
    batch: int = PUSH_BATCH,
) -> int:
    """Add ``blog_id`` (scored ``score_ms``) to each follower's inbox and trim it; returns count.

    Pipelined in batches so that an author with many fans costs a few round
    trips, not one per fan.
    """
    pushed = 0
    pipe = client.pipeline(transaction=False)
    for follower in follower_ids:
        key = feed_key(follower)
        pipe.zadd(key, {str(blog_id): score_ms})
        pipe.zremrangebyrank(key, 0, -(inbox_size + 1))
        pushed += 1
        if pushed % batch == 0:
            pipe.execute()
    if len(pipe):
        pipe.execute()
    return pushed


@dataclass(frozen=True)
class ScrollPage:
    """One feed page: blog ids newest first, and the cursor for the next page."""

    ids: list[int]
    min_time: int
    offset: int


def next_cursor(
    entries: list[tuple[str, float]], last_id: int | None, offset: int
) -> tuple[int, int]:
    """The (minTime, offset) cursor after ``entries`` (score-descending), hmdp's rule.

    ``offset`` = how many of the page's items have the page's smallest score;
    if that score is also the ``last_id`` we started from, the items skipped
    to get here had it too, so the incoming ``offset`` is added. An empty page
    keeps the incoming cursor (scrolling further returns nothing again).
    """
    if not entries:
        return (last_id if last_id is not None else 0), offset
    min_time = int(entries[-1][1])
    same = 0
    for _, score in reversed(entries):
        if int(score) != min_time:
            break
        same += 1
    if last_id is not None and min_time == last_id:
        same += offset
    return min_time, same


def scroll(
    client: redis.Redis, user_id: int, last_id: int | None, offset: int, count: int
) -> ScrollPage:
    """One page of ``user_id``'s inbox below (or at) ``last_id`` (None = from the newest).

    Ties are exact: items sharing the page's last score are counted into the
    next offset, and Redis orders equal scores by member, the same way on
    every call, so the next page starts right after the last item returned.
    """
    entries = client.zrevrangebyscore(
        feed_key(user_id),
        "+inf" if last_id is None else last_id,
        0,
        start=offset,
        num=count,
        withscores=True,
    )
    min_time, next_offset = next_cursor(entries, last_id, offset)
    return ScrollPage([int(member) for member, _ in entries], min_time, next_offset)
