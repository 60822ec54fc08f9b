"""Routes of /blog: publish, read, like, hot list, per-user lists and the follow feed.

* Likes: who liked is the ZSET ``blog:liked:{blogId}``; the count is
  ``tb_blog.liked``. A toggle is decided atomically in Redis and its +1/-1 is
  applied in SQL (``liked = liked + delta``), so the two agree under
  concurrent toggles (:mod:`cache.likes`).
* Feed (push model): publishing writes the blog, then pushes its id into each
  follower's inbox ``feed:{userId}`` scored by the publish time in ms;
  ``GET /blog/of/follow`` scrolls it by score (:mod:`cache.feed`). If Redis
  fails after the blog is committed, the blog stays published and the error
  is logged: followers miss it in their feed, nothing else is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC
from typing import Annotated, Any

import redis
from flask import Blueprint, Response
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, Strict, WithJsonSchema
from sqlalchemy import Select, select, update

from cache import feed as feed_store
from cache import likes as like_store
from metrics import FEED_PUSHES
from models.demo import blog_likers, is_demo_blog
from models.entities import MAX_ID, Blog, Follow, Shop, User
from services import Services
from timestamps import iso_instant

from .auth import current_user, login_required, require_user
from .contract import contract
from .envelope import BadRequest, NotFound, NotLoggedIn, ok
from .images import MAX_BLOG_IMAGES, front_end_url, owned_uploads, upload_path
from .runtime import now_ms, services, settings
from .schemas import (
    Body,
    Page,
    Path,
    Query,
    QueryId,
    Timestamp,
    UserSummary,
    not_found,
    path_id,
    text,
    whole,
)
from .social import follower_ids, user_summaries

log = logging.getLogger(__name__)

bp = Blueprint("blogs", __name__)

PAGE_SIZE = 10
LIKERS_SHOWN = 5
MAX_TITLE = 255
MAX_CONTENT = 5_000


def blog_json(blog: Blog, author: User | None, is_like: bool) -> dict[str, Any]:
    """hmdp's Blog as JSON: the row, the author's name and icon, and the caller's isLike."""
    zone = settings().zone
    return {
        "id": blog.id,
        "shopId": blog.shop_id,
        "userId": blog.user_id,
        "title": blog.title,
        "content": blog.content,
        "images": blog.images,
        "liked": blog.liked,
        "comments": blog.comments,
        "name": author.nick_name if author else "",
        "icon": author.icon if author else "",
        "isLike": is_like,
        "createTime": iso_instant(blog.create_time, zone),
        "updateTime": iso_instant(blog.update_time, zone),
    }


def _viewer() -> int | None:
    user = current_user()
    return user.id if user else None


def _render(blogs: Sequence[Blog]) -> list[dict[str, Any]]:
    """Blogs with their authors (one query) and the caller's likes (one pipeline)."""
    if not blogs:
        return []
    author_ids = {b.user_id for b in blogs}
    with services().db.sessions() as session:
        authors = {u.id: u for u in session.scalars(select(User).where(User.id.in_(author_ids)))}
    liked = like_store.liked_among(services().redis, [b.id for b in blogs], _viewer())
    return [blog_json(b, authors.get(b.user_id), b.id in liked) for b in blogs]


def _page(query: Select, current: int) -> list[dict[str, Any]]:
    with services().db.sessions() as session:
        blogs = list(session.scalars(query.offset((current - 1) * PAGE_SIZE).limit(PAGE_SIZE)))
    return _render(blogs)


def _get_blog(blog_id: int) -> Blog:
    with services().db.sessions() as session:
        blog = session.get(Blog, blog_id)
    if blog is None:
        raise NotFound("no such blog")
    return blog


# --- publishing ------------------------------------------------------------------------


def _images(value: object) -> list[str]:
    """The uploads a blog shows, as canonical upload paths (web/images.py).

    hmdp sends one comma-separated string of the paths its editor shows
    (``/imgs/blogs/...``); a list of strings is accepted too, and so is the
    bare path the upload answered. Anything else is not one of our images.
    """
    if value is None or value == "":
        return []
    if isinstance(value, list):
        if not all(isinstance(v, str) and v and "," not in v for v in value):
            raise whole("'images' must be a string or a list of non-empty strings")
        names = value
    elif isinstance(value, str):
        names = value.split(",")
    else:
        raise whole("'images' must be a string or a list of strings")
    if len(names) > MAX_BLOG_IMAGES:
        raise whole(f"a blog shows at most {MAX_BLOG_IMAGES} images")
    paths = []
    for name in names:
        path = upload_path(name.strip())
        if path is None:
            raise whole(f"'images' must name images uploaded with POST /upload/blog: {name[:80]!r}")
        if path in paths:
            raise whole(f"image {name[:80]!r} is named twice")
        paths.append(path)
    return paths


def _existing_shop_id(value: int) -> int:
    if not 1 <= value <= MAX_ID:
        raise not_found("no such shop")
    return value


Images = Annotated[
    list[str],
    BeforeValidator(_images),
    WithJsonSchema(
        {
            "description": "uploads of the author (POST /upload/blog), comma-separated or a list",
            "anyOf": [
                {"type": "string", "maxLength": 2048},
                {"type": "array", "items": {"type": "string"}, "maxItems": MAX_BLOG_IMAGES},
                {"type": "null"},
            ],
        }
    ),
]


class BlogBody(Body):
    shopId: Annotated[int, Strict(), AfterValidator(_existing_shop_id)]
    title: text(MAX_TITLE, min_length=1, strip=True)
    content: text(MAX_CONTENT, min_length=1, strip=True)
    images: Images = []


class BlogPath(Path):
    blog_id: path_id("blog")


class PageQuery(Query):
    current: Page = 1


class UserBlogsQuery(PageQuery):
    id: QueryId


class FeedQuery(Query):
    lastId: Annotated[int, Field(ge=0, le=MAX_ID, description="the last page's minTime (ms)")] = -1
    offset: Annotated[int, Field(ge=0, description="the last page's offset")] = 0


class BlogData(BaseModel):
    """hmdp's Blog, with its author's name and icon and whether the caller likes it."""

    id: int
    shopId: int
    userId: int
    title: str
    content: str
    images: str
    liked: int
    comments: int
    name: str
    icon: str
    isLike: bool
    createTime: Timestamp
    updateTime: Timestamp


class LikeData(BaseModel):
    isLike: bool


class FeedPage(BaseModel):
    list: list[BlogData]
    minTime: int
    offset: int


@bp.post("/blog")
@login_required
@contract(body=BlogBody, data=int, errors={404: "no such shop"})
def publish(body: BlogBody) -> Response:
    """Publish a blog ``{shopId, title, content, images}``; data = its id.

    The row is committed first, then the id is pushed into every follower's
    feed (pipelined batches; inboxes trimmed to settings.feed_inbox_size).
    ``images`` must be the author's own uploads (so only the author can delete
    a photo their blog shows); they are stored as the front end shows them,
    ``/imgs/blogs/...``, comma-separated.
    """
    shop_id, title, content, images = body.shopId, body.title, body.content, body.images
    me = require_user().id
    with services().db.session() as session:
        if session.get(Shop, shop_id) is None:
            raise NotFound("no such shop")
        if session.get(User, me) is None:
            raise NotLoggedIn("your account no longer exists")
        mine = owned_uploads(session, me, images)
        foreign = [p for p in images if p not in mine]
        if foreign:
            raise BadRequest(f"not one of your uploads: {front_end_url(foreign[0])}")
        shown = ",".join(front_end_url(p) for p in images)
        blog = Blog(shop_id=shop_id, user_id=me, title=title, content=content, images=shown)
        session.add(blog)
        session.flush()
        blog_id = blog.id
    try:
        pushed = feed_store.push(
            services().redis, follower_ids(me), blog_id, now_ms(), settings().feed_inbox_size
        )
        FEED_PUSHES.inc(pushed)
    except redis.RedisError:
        log.exception("blog %s published but not pushed to the feeds", blog_id)
    return ok(blog_id)


# --- reading ---------------------------------------------------------------------------


@bp.get("/blog/<blog_id>")
@contract(path=BlogPath, data=BlogData, errors={404: "no such blog"})
def get_blog(path: BlogPath) -> Response:
    """One blog with its author's name/icon and whether the caller likes it."""
    blog = _get_blog(path.blog_id)
    return ok(_render([blog])[0])


@bp.get("/blog/hot")
@contract(query=PageQuery, data=list[BlogData])
def hot(query: PageQuery) -> Response:
    """Blogs by likes, most liked first (ties: newest first), 10 per page."""
    found = select(Blog).order_by(Blog.liked.desc(), Blog.id.desc())
    return ok(_page(found, query.current))


@bp.get("/blog/of/me")
@login_required
@contract(query=PageQuery, data=list[BlogData])
def of_me(query: PageQuery) -> Response:
    """The caller's blogs, newest first, 10 per page."""
    me = require_user().id
    return ok(_page(select(Blog).where(Blog.user_id == me).order_by(Blog.id.desc()), query.current))


@bp.get("/blog/of/user")
@contract(query=UserBlogsQuery, data=list[BlogData], errors={404: "no such user"})
def of_user(query: UserBlogsQuery) -> Response:
    """A user's blogs, newest first, 10 per page (404 for an unknown user)."""
    user_id, current = query.id, query.current
    with services().db.sessions() as session:
        if session.get(User, user_id) is None:
            raise NotFound("no such user")
    return ok(_page(select(Blog).where(Blog.user_id == user_id).order_by(Blog.id.desc()), current))


# --- likes -----------------------------------------------------------------------------


@bp.put("/blog/like/<blog_id>")
@login_required
@contract(path=BlogPath, data=LikeData, errors={404: "no such blog"})
def like(path: BlogPath) -> Response:
    """Toggle the caller's like; data = ``{isLike}`` after the toggle.

    Redis decides (atomically) whether this toggle likes or unlikes; the same
    +1/-1 goes to tb_blog.liked in SQL. If that update fails the toggle is
    undone in Redis, so the set and the counter never drift apart.
    """
    ident = path.blog_id
    _get_blog(ident)
    me = require_user().id
    client = services().redis
    done = like_store.toggle(client, ident, me, now_ms())
    try:
        with services().db.session() as session:
            result = session.execute(
                update(Blog).where(Blog.id == ident).values(liked=Blog.liked + done.delta)
            )
            if result.rowcount == 0:
                raise NotFound("no such blog")
    except BaseException:
        like_store.undo(client, ident, me, done)
        raise
    return ok({"isLike": done.delta > 0})


@bp.get("/blog/likes/<blog_id>")
@contract(path=BlogPath, data=list[UserSummary], errors={404: "no such blog"})
def likers(path: BlogPath) -> Response:
    """The first five users who like the blog, earliest like first."""
    ident = path.blog_id
    _get_blog(ident)
    ids = like_store.first_likers(services().redis, ident, LIKERS_SHOWN)
    with services().db.sessions() as session:
        return ok(user_summaries(session, ids))


# --- feed ------------------------------------------------------------------------------


@bp.get("/blog/of/follow")
@login_required
@contract(query=FeedQuery, data=FeedPage)
def feed(query: FeedQuery) -> Response:
    """One scroll page of the caller's feed: ``{list, minTime, offset}``.

    First call without ``lastId`` (or with the current time in ms); then pass
    the answer's ``minTime`` as ``lastId`` and its ``offset`` as ``offset``.
    An empty list means the end. Blogs deleted since they were pushed are
    left out of the list but still advance the cursor.
    """
    cfg = settings()
    last_id = query.lastId
    offset = query.offset
    if offset > cfg.feed_inbox_size:  # a setting, so not in the schema
        raise BadRequest(f"query parameter 'offset' must be <= {cfg.feed_inbox_size}")
    me = require_user().id
    page = feed_store.scroll(
        services().redis, me, None if last_id < 0 else last_id, offset, cfg.feed_page_size
    )
    blogs: list[Blog] = []
    if page.ids:
        with services().db.sessions() as session:
            found = {b.id: b for b in session.scalars(select(Blog).where(Blog.id.in_(page.ids)))}
        blogs = [found[i] for i in page.ids if i in found]
    return ok({"list": _render(blogs), "minTime": page.min_time, "offset": page.offset})


# --- seed ------------------------------------------------------------------------------------

LIKE_GAP_MS = 60_000  # demo likes: one a minute after the blog appeared


def post_seed(svc: Services) -> None:
    """``flask seed``: the Redis side of the demo blogs, their likers and the feeds.

    * A demo blog's like ZSET is written only when it is missing while the
      counter holds exactly the demo's likes (a fresh seed, or Redis lost the
      set): likes and unlikes made since are never undone, and ZCARD stays
      equal to ``tb_blog.liked``.
    * Every demo blog is pushed into the feed of each user who follows its
      author, scored by its publish time as publishing does (ZADD: a second
      seed adds nothing).
    """
    client = svc.redis
    with svc.db.sessions() as session:
        rows = [
            row
            for row in session.execute(select(Blog.id, Blog.user_id, Blog.liked, Blog.create_time))
            if is_demo_blog(row.id, row.user_id)
        ]
        followers: dict[int, list[int]] = {}
        for follower, followed in session.execute(select(Follow.user_id, Follow.follow_user_id)):
            followers.setdefault(followed, []).append(follower)
    exists = client.pipeline(transaction=False)
    for row in rows:
        exists.exists(like_store.liked_key(row.id))
    present = exists.execute()
    writes = client.pipeline(transaction=False)
    for row, there in zip(rows, present, strict=True):
        likers = blog_likers(row.id)
        if there or not likers or row.liked != len(likers):
            continue
        published = int(row.create_time.replace(tzinfo=UTC).timestamp() * 1000)
        scores = {str(u): published + (i + 1) * LIKE_GAP_MS for i, u in enumerate(likers)}
        writes.zadd(like_store.liked_key(row.id), scores, nx=True)
    writes.execute()
    inbox = svc.settings.feed_inbox_size
    for row in rows:
        published = int(row.create_time.replace(tzinfo=UTC).timestamp() * 1000)
        feed_store.push(client, followers.get(row.user_id, []), row.id, published, inbox)
