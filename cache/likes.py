"""Blog likes: ``blog:liked:{blogId}`` is a ZSET of liker id -> like time (ms).

The set says *who* liked (and in which order, for "first 5 likers"); the count
lives in ``tb_blog.liked``. A toggle is decided atomically in Redis
(``lua/like_toggle.lua``): its answer (+1 or -1) is what the caller adds to
the counter in SQL (``liked = liked + delta``), so concurrent toggles — even of
one user — each move the counter exactly once and it stays equal to ZCARD.
If the SQL update fails, :func:`undo` puts the set back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from .scripts import load_script

LIKED_KEY = "blog:liked:{blog_id}"


def liked_key(blog_id: int) -> str:
    """The Redis key of the likers of ``blog_id``."""
    return LIKED_KEY.format(blog_id=blog_id)


@dataclass(frozen=True)
class Toggle:
    """What a toggle did: delta +1 (liked now) or -1 (unliked), and the like's score."""

    delta: int
    score: float


def toggle(client: redis.Redis, blog_id: int, user_id: int, now_ms: int) -> Toggle:
    """Like if not liked, else unlike — atomically; the delta to apply to the counter."""
    delta, score = load_script(client, "like_toggle")(
        keys=[liked_key(blog_id)], args=[str(user_id), str(now_ms)]
    )
    return Toggle(int(delta), float(score))


def undo(client: redis.Redis, blog_id: int, user_id: int, done: Toggle) -> None:
    """Revert a toggle whose counter update failed (remove the like, or restore it)."""
    if done.delta > 0:
        client.zrem(liked_key(blog_id), str(user_id))
    else:
        client.zadd(liked_key(blog_id), {str(user_id): done.score}, nx=True)


def liked_among(client: redis.Redis, blog_ids: Sequence[int], user_id: int | None) -> set[int]:
    """The blogs among ``blog_ids`` that ``user_id`` likes, in one pipelined round trip."""
    if user_id is None or not blog_ids:
        return set()
    pipe = client.pipeline(transaction=False)
    for blog_id in blog_ids:
        pipe.zscore(liked_key(blog_id), str(user_id))
    scores = pipe.execute()
    return {blog_id for blog_id, score in zip(blog_ids, scores, strict=True) if score is not None}


def first_likers(client: redis.Redis, blog_id: int, n: int = 5) -> list[int]:
    """The ids of the first ``n`` users who (still) like the blog, earliest first."""
    return [int(m) for m in client.zrange(liked_key(blog_id), 0, n - 1)]


def count(client: redis.Redis, blog_id: int) -> int:
    """How many users like the blog according to Redis (ZCARD)."""
    return int(client.zcard(liked_key(blog_id)))
