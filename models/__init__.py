"""SQLAlchemy models, sessions and migrations. Imports nothing else of ours."""

from .entities import (
    Base,
    Blog,
    BlogComment,
    Follow,
    SeckillVoucher,
    Shop,
    ShopType,
    Upload,
    User,
    UserInfo,
    Voucher,
    VoucherOrder,
    utcnow,
)
from .session import Database, make_engine

__all__ = [
    "Base",
    "Blog",
    "BlogComment",
    "Database",
    "Follow",
    "SeckillVoucher",
    "Shop",
    "ShopType",
    "Upload",
    "User",
    "UserInfo",
    "Voucher",
    "VoucherOrder",
    "make_engine",
    "utcnow",
]
