"""Demo data at the seed document's test scale, loaded with bulk inserts.

Every demo row has a fixed id, and a row whose id already exists is skipped,
so loading twice (or after an interrupted load) is safe and converges to the
same data. Generation is seeded, so two machines load identical data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from .entities import (
    Base,
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

ADMIN_PHONE = "13900000000"
USER_PHONE_BASE = 13_800_000_000
SECKILL_STOCK = 300  # 100 seckill vouchers x 300 = the seed's 30,000-request run


@dataclass(frozen=True)
class DemoSize:
    users: int
    shops: int
    vouchers: int
    seckill_vouchers: int

    @classmethod
    def named(cls, name: str) -> DemoSize:
        """'full' is the seed's test scale; 'small' is for tests and the demo."""
        sizes = {
            "full": cls(users=102_000, shops=50_000, vouchers=110, seckill_vouchers=100),
            "small": cls(users=200, shops=500, vouchers=20, seckill_vouchers=10),
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


def _shop_rows(ids: list[int], rng_seed: int = 7) -> list[dict]:
    rows = []
    for shop_id in ids:
        rng = random.Random(rng_seed * 1_000_003 + shop_id)
        area, x0, y0 = AREAS[shop_id % len(AREAS)]
        type_id = shop_id % len(SHOP_TYPES) + 1
        name = rng.choice(NAME_PARTS) + rng.choice(NAME_PARTS) + rng.choice(NAME_TAILS)
        rows.append(
            {
                "id": shop_id,
                "name": f"{name}{shop_id}",
                "type_id": type_id,
                "images": f"https://img.hmdp.example/shop/{shop_id % 100}.jpg",
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

        # User id 1 is the admin; demo users follow with phones 138xxxxxxxx.
        user_ids = _missing_ids(session, User, range(1, size.users + 2))
        user_rows = [
            {
                "id": i,
                "phone": ADMIN_PHONE if i == 1 else str(USER_PHONE_BASE + i - 1),
                "nick_name": "admin" if i == 1 else f"user_{i:06d}",
                "icon": "",
                "role": "admin" if i == 1 else "user",
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
