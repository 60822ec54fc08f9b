"""Demo data at the seed document's test scale, loaded with bulk inserts.

Every demo row has a fixed id, and a row whose id already exists is skipped,
so loading twice (or after an interrupted load) is safe and converges to the
same data. Generation is seeded, so two machines load identical data.

The demo renders offline in the hmdp front end: every image it names is one
the front end ships in its ``imgs`` folder (served at ``/imgs/``): its type
icons, its sample blog photos, its avatars. It has a social side too: ten
bloggers (users 2..11) write the demo blogs, users 2..201 follow three of
them each and like blogs, so the home page (hot blogs), the feed and the
profile pages show content. The Redis side of it (like ZSETs, feeds, follow
sets) is written by the blueprints' ``post_seed`` steps from the functions
here (:func:`blog_likers`, :func:`blog_author`) and the database rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from .entities import (
    Base,
    Blog,
    Follow,
    SeckillVoucher,
    Shop,
    ShopType,
    User,
    UserInfo,
    Voucher,
    utcnow,
)
from .session import Database

# hmdp's ten shop types, with its icons and sort order.
SHOP_TYPES = [
    ("美食", "/types/ms.png"),
    ("KTV", "/types/KTV.png"),
    ("丽人·美发", "/types/lrmf.png"),
    ("健身运动", "/types/jsyd.png"),
    ("按摩·足疗", "/types/amzl.png"),
    ("美容SPA", "/types/spa.png"),
    ("亲子游乐", "/types/qzyl.png"),
    ("酒吧", "/types/jiuba.png"),
    ("轰趴馆", "/types/hpg.png"),
    ("美睫·美甲", "/types/mjmj.png"),
]
# Shops are spread over Hangzhou's districts, as in hmdp's sample data.
AREAS = [
    ("拱宸桥/上塘", 120.149, 30.318),
    ("北部新城", 120.139, 30.333),
    ("运河上街", 120.151, 30.301),
    ("大关", 120.155, 30.292),
    ("西湖", 120.148, 30.259),
    ("武林广场", 120.165, 30.275),
    ("钱江新城", 120.212, 30.247),
    ("滨江", 120.211, 30.208),
]
NAME_PARTS = ["老", "新", "小", "大", "金", "银", "福", "乐", "美", "好", "鲜", "香"]
NAME_TAILS = ["餐厅", "茶餐厅", "火锅", "烤肉", "KTV", "美发", "健身房", "足疗", "酒吧", "小馆"]

# Files the hmdp front end ships under imgs/ (paths as its pages use them): the photos of
# its sample blogs, and its avatars (default-icon.png is what it shows for an empty icon).
FRONT_END_PHOTOS = (
    "/imgs/blogs/7/14/4771fefb-1a87-4252-816c-9f7ec41ffa4a.jpg",
    "/imgs/blogs/4/10/2f07e3c9-ddce-482d-9ea7-c21450f8d7cd.jpg",
    "/imgs/blogs/2/6/b0756279-65da-4f2d-b62a-33f74b06454a.jpg",
    "/imgs/blogs/10/7/7e97f47d-eb49-4dc9-a583-95faa7aed287.jpg",
    "/imgs/blogs/1/2/4a7b496b-2a08-4af7-aa95-df2c3bd0ef97.jpg",
    "/imgs/blogs/14/3/52b290eb-8b5d-403b-8373-ba0bb856d18e.jpg",
    "/imgs/blogs/4/7/863cc302-d150-420d-a596-b16e9232a1a6.jpg",
    "/imgs/blogs/11/12/8b37d208-9414-4e78-b065-9199647bb3e3.jpg",
    "/imgs/blogs/4/1/fa74a6d6-3026-4cb7-b0b6-35abb1e52d11.jpg",
    "/imgs/blogs/9/12/ac2ce2fb-0605-4f14-82cc-c962b8c86688.jpg",
    "/imgs/blogs/4/0/26a7cd7e-6320-432c-a0b4-1b7418f45ec7.jpg",
    "/imgs/blogs/15/9/cea51d9b-ac15-49f6-b9f1-9cf81e9b9c85.jpg",
    "/imgs/blogs/blog1.jpg",
)
FRONT_END_AVATARS = (
    "/imgs/icons/kkjtbcr.jpg",
    "/imgs/icons/user5-icon.png",
    "/imgs/blogs/blog1.jpg",
    "/imgs/icons/default-icon.png",
)

# The social side: who writes, who follows and likes (users that every size has).
SOCIAL_USERS = range(2, 202)
BLOGGERS = SOCIAL_USERS[:10]
FOLLOW_OFFSETS = (0, 3, 7)  # each social user follows three bloggers
MAX_LIKERS = 30
MAX_BLOGS = 200  # blogs of the largest size: ids 1..MAX_BLOGS may be demo blogs
BLOG_TITLES = (
    "{shop}｜人均不贵，味道在线",
    "周末打卡{shop}，值得二刷",
    "藏在巷子里的宝藏店：{shop}",
    "{shop}探店日记",
    "带朋友去了{shop}，一致好评",
    "下班后的小确幸｜{shop}",
    "{shop}新品尝鲜，先冲为敬",
    "雨天也要去的{shop}",
)
BLOG_CONTENTS = (
    "环境干净明亮，服务很周到，招牌菜分量足，下次还来。",
    "排队二十分钟，但是值得！推荐坐靠窗的位置，拍照很好看。",
    "价格实惠，老板很热情，适合和朋友小聚。",
    "整体体验不错，甜品是惊喜，主菜略咸。",
    "第二次来了，依旧稳定发挥，性价比很高。",
    "周末人多，建议提前预约，停车方便。",
)

# User 1's phone. The demo grants no role: that phone is an admin only where
# HMDP_ADMIN_PHONES names it (manage.py up and the local cluster do; compose does not).
ADMIN_PHONE = "13900000000"
USER_PHONE_BASE = 13_800_000_000
SECKILL_STOCK = 300  # 100 seckill vouchers x 300 = the seed's 30,000-request run


@dataclass(frozen=True)
class DemoSize:
    users: int
    shops: int
    vouchers: int
    seckill_vouchers: int
    blogs: int

    @classmethod
    def named(cls, name: str) -> DemoSize:
        """'full' is the seed's test scale; 'small' is for tests and the demo."""
        sizes = {
            "full": cls(
                users=102_000, shops=50_000, vouchers=110, seckill_vouchers=100, blogs=MAX_BLOGS
            ),
            "small": cls(users=200, shops=500, vouchers=20, seckill_vouchers=10, blogs=40),
        }
        if name not in sizes:
            raise ValueError(f"unknown demo size {name!r}; use one of {sorted(sizes)}")
        return sizes[name]


Progress = Callable[[str, int, int], None]  # (table, rows done, rows total)


def _missing_ids(session: Session, model: type[Base], ids: range) -> list[int]:
    pk = model.__mapper__.primary_key[0]
    present = set(session.scalars(select(pk).where(pk >= ids.start, pk < ids.stop)))
    return [i for i in ids if i not in present]


def _batched(rows: list[dict], size: int) -> Iterator[list[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _bulk(
    session: Session, model: type[Base], rows: list[dict], progress: Progress, batch: int = 5000
) -> int:
    done = 0
    for chunk in _batched(rows, batch):
        session.execute(insert(model), chunk)
        session.commit()
        done += len(chunk)
        progress(model.__tablename__, done, len(rows))
    if not rows:
        progress(model.__tablename__, 0, 0)
    return done


def _photos(seed: int, count: int) -> str:
    """``count`` different front-end photos, comma-separated (hmdp's images column)."""
    return ",".join(FRONT_END_PHOTOS[(seed + k * 5) % len(FRONT_END_PHOTOS)] for k in range(count))


def _shop_name(shop_id: int, rng: random.Random) -> str:
    return rng.choice(NAME_PARTS) + rng.choice(NAME_PARTS) + rng.choice(NAME_TAILS) + str(shop_id)


def _shop_rng(shop_id: int, rng_seed: int = 7) -> random.Random:
    return random.Random(rng_seed * 1_000_003 + shop_id)


def _shop_rows(ids: list[int]) -> list[dict]:
    rows = []
    for shop_id in ids:
        rng = _shop_rng(shop_id)
        area, x0, y0 = AREAS[shop_id % len(AREAS)]
        type_id = shop_id % len(SHOP_TYPES) + 1
        rows.append(
            {
                "id": shop_id,
                "name": _shop_name(shop_id, rng),
                "type_id": type_id,
                "images": _photos(shop_id, 3),
                "area": area,
                "address": f"{area}{rng.randint(1, 999)}号",
                "x": round(x0 + rng.uniform(-0.03, 0.03), 6),
                "y": round(y0 + rng.uniform(-0.03, 0.03), 6),
                "avg_price": rng.randint(20, 500),
                "sold": rng.randint(0, 10_000),
                "comments": rng.randint(0, 5_000),
                "score": rng.randint(30, 50),
                "open_hours": "10:00-22:00",
            }
        )
    return rows


def _avatar(user_id: int) -> str:
    """Bloggers show the front end's avatars; everybody else its default (an empty icon)."""
    if user_id in BLOGGERS:
        return FRONT_END_AVATARS[(user_id - BLOGGERS[0]) % len(FRONT_END_AVATARS)]
    return ""


def blog_author(blog_id: int) -> int:
    """Who wrote demo blog ``blog_id``."""
    return BLOGGERS[(blog_id - 1) % len(BLOGGERS)]


def is_demo_blog(blog_id: int, author_id: int) -> bool:
    """Whether a tb_blog row is one the demo wrote (its id and its author say so)."""
    return 1 <= blog_id <= MAX_BLOGS and author_id == blog_author(blog_id)


def blog_likers(blog_id: int) -> list[int]:
    """Who likes demo blog ``blog_id``, in like order (never its author)."""
    rng = random.Random(104_729 * blog_id)
    candidates = [u for u in SOCIAL_USERS if u != blog_author(blog_id)]
    return rng.sample(candidates, rng.randint(0, MAX_LIKERS))


def follow_pairs(users: int) -> list[tuple[int, int]]:
    """(follower, followed) of the demo, for a demo with ``users`` users (ids 2..users+1)."""
    pairs = []
    for user in SOCIAL_USERS:
        if user > users + 1:
            break
        for offset in FOLLOW_OFFSETS:
            followed = BLOGGERS[(user + offset) % len(BLOGGERS)]
            if followed != user:
                pairs.append((user, followed))
    return pairs


def _blog_rows(ids: list[int], shops: int, now: datetime) -> list[dict]:
    rows = []
    for blog_id in ids:
        shop_id = (blog_id * 7 - 1) % min(shops, 50) + 1  # shops of the first list pages
        shop_name = _shop_name(shop_id, _shop_rng(shop_id))
        rng = random.Random(15_485_863 * blog_id)
        created = now - timedelta(hours=blog_id * 5, minutes=rng.randint(0, 59))
        rows.append(
            {
                "id": blog_id,
                "shop_id": shop_id,
                "user_id": blog_author(blog_id),
                "title": rng.choice(BLOG_TITLES).format(shop=shop_name),
                "images": _photos(blog_id, rng.randint(1, 3)),
                "content": rng.choice(BLOG_CONTENTS),
                "liked": len(blog_likers(blog_id)),
                "comments": 0,
                "create_time": created,
                "update_time": created,
            }
        )
    return rows


def _insert_follows(session: Session, users: int, progress: Progress) -> int:
    """The demo's follow rows that are missing, with the profile counters moved by them.

    ``fans``/``followee`` move by exactly the rows inserted (as a follow through
    the API moves them), so they stay right on top of earlier data.
    """
    pairs = follow_pairs(users)
    ids = _missing_ids(session, Follow, range(1, len(pairs) + 1))
    rows = [{"id": i, "user_id": pairs[i - 1][0], "follow_user_id": pairs[i - 1][1]} for i in ids]
    done = _bulk(session, Follow, rows, progress)
    followee: dict[int, int] = {}
    fans: dict[int, int] = {}
    for row in rows:
        followee[row["user_id"]] = followee.get(row["user_id"], 0) + 1
        fans[row["follow_user_id"]] = fans.get(row["follow_user_id"], 0) + 1
    info = UserInfo.__table__
    for column, deltas in (("followee", followee), ("fans", fans)):
        if deltas:  # one statement, executed for every user (an executemany)
            session.execute(
                update(info)
                .where(info.c.user_id == bindparam("who"))
                .values({column: info.c[column] + bindparam("delta")}),
                [{"who": user_id, "delta": delta} for user_id, delta in deltas.items()],
            )
    session.commit()
    return done


def load_demo_data(
    db: Database, size: DemoSize, progress: Progress | None = None
) -> dict[str, int]:
    """Insert whatever demo rows are missing; returns rows inserted per table."""
    progress = progress or (lambda *_: None)
    inserted: dict[str, int] = {}
    now = utcnow()
    with db.sessions() as session:
        type_ids = _missing_ids(session, ShopType, range(1, len(SHOP_TYPES) + 1))
        inserted["tb_shop_type"] = _bulk(
            session,
            ShopType,
            [
                {"id": i, "name": SHOP_TYPES[i - 1][0], "icon": SHOP_TYPES[i - 1][1], "sort": i}
                for i in type_ids
            ],
            progress,
        )

        # User id 1 has ADMIN_PHONE; demo users follow with phones 138xxxxxxxx.
        user_ids = _missing_ids(session, User, range(1, size.users + 2))
        user_rows = [
            {
                "id": i,
                "phone": ADMIN_PHONE if i == 1 else str(USER_PHONE_BASE + i - 1),
                "nick_name": "admin" if i == 1 else f"user_{i:06d}",
                "icon": _avatar(i),
                "role": "user",
                "password": "",
            }
            for i in user_ids
        ]
        inserted["tb_user"] = _bulk(session, User, user_rows, progress)
        info_ids = _missing_ids(session, UserInfo, range(1, size.users + 2))
        inserted["tb_user_info"] = _bulk(
            session,
            UserInfo,
            [{"user_id": i, "city": "杭州", "introduce": "", "level": i % 8} for i in info_ids],
            progress,
        )

        shop_ids = _missing_ids(session, Shop, range(1, size.shops + 1))
        inserted["tb_shop"] = _bulk(session, Shop, _shop_rows(shop_ids), progress)

        blog_ids = _missing_ids(session, Blog, range(1, size.blogs + 1))
        inserted["tb_blog"] = _bulk(session, Blog, _blog_rows(blog_ids, size.shops, now), progress)
        inserted["tb_follow"] = _insert_follows(session, size.users, progress)

        voucher_ids = _missing_ids(session, Voucher, range(1, size.vouchers + 1))
        ordinary = size.vouchers - size.seckill_vouchers
        inserted["tb_voucher"] = _bulk(
            session,
            Voucher,
            [
                {
                    "id": i,
                    "shop_id": (i - 1) % size.shops + 1,
                    "title": f"{50 + i % 5 * 50}元代金券",
                    "sub_title": "周一至周日均可使用",
                    "rules": "全场通用\\n无需预约\\n不可找零",
                    "pay_value": 4750 + (i % 5) * 4000,
                    "actual_value": 5000 + (i % 5) * 5000,
                    "type": 0 if i <= ordinary else 1,
                    "status": 1,
                }
                for i in voucher_ids
            ],
            progress,
        )
        seckill_ids = _missing_ids(session, SeckillVoucher, range(ordinary + 1, size.vouchers + 1))
        inserted["tb_seckill_voucher"] = _bulk(
            session,
            SeckillVoucher,
            [
                {
                    "voucher_id": i,
                    "stock": SECKILL_STOCK,
                    "begin_time": now - timedelta(days=1),
                    "end_time": now + timedelta(days=365),
                }
                for i in seckill_ids
            ],
            progress,
        )
    return inserted
