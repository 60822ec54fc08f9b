"""The hmdp tables, as typed SQLAlchemy 2.x models.

Table and column names follow hmdp's MySQL schema (``tb_shop.type_id``,
``tb_voucher_order`` ...) so that an existing hmdp database and front end fit.
Times are stored as naive UTC ``DATETIME``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT ids everywhere, but SQLite only auto-increments "INTEGER PRIMARY KEY".
BigId = BigInteger().with_variant(Integer(), "sqlite")
# The largest BIGINT: no id can be larger, and a larger one must not reach a driver.
MAX_ID = 2**63 - 1


def utcnow() -> datetime:
    """Naive UTC now: what every DATETIME column holds."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class TimestampMixin:
    create_time: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, server_default=func.now(), nullable=False
    )
    update_time: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow, server_default=func.now(), nullable=False
    )


class User(TimestampMixin, Base):
    __tablename__ = "tb_user"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    phone: Mapped[str] = mapped_column(String(11), unique=True, nullable=False)
    password: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    nick_name: Mapped[str] = mapped_column(String(32), default="", nullable=False)
    icon: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    role: Mapped[str] = mapped_column(String(16), default="user", nullable=False)


class UserInfo(TimestampMixin, Base):
    __tablename__ = "tb_user_info"

    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("tb_user.id", ondelete="CASCADE"), primary_key=True
    )
    city: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    introduce: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    fans: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    followee: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    gender: Mapped[int] = mapped_column(SmallInteger, default=0, nullable=False)
    birthday: Mapped[date | None] = mapped_column(Date, nullable=True)
    credits: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    level: Mapped[int] = mapped_column(SmallInteger, default=0, nullable=False)


class ShopType(TimestampMixin, Base):
    __tablename__ = "tb_shop_type"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(32), nullable=False)
    icon: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    sort: Mapped[int] = mapped_column(Integer, default=0, nullable=False)


class Shop(TimestampMixin, Base):
    __tablename__ = "tb_shop"
    __table_args__ = (Index("ix_tb_shop_type_id", "type_id"), Index("ix_tb_shop_name", "name"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    type_id: Mapped[int] = mapped_column(BigId, ForeignKey("tb_shop_type.id"), nullable=False)
    images: Mapped[str] = mapped_column(String(1024), default="", nullable=False)
    area: Mapped[str] = mapped_column(String(128), default="", nullable=False)
    address: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    x: Mapped[float] = mapped_column(Float, nullable=False)  # longitude
    y: Mapped[float] = mapped_column(Float, nullable=False)  # latitude
    avg_price: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    sold: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    comments: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    score: Mapped[int] = mapped_column(Integer, default=0, nullable=False)  # x10, e.g. 47 = 4.7
    open_hours: Mapped[str] = mapped_column(String(32), default="", nullable=False)


class Voucher(TimestampMixin, Base):
    __tablename__ = "tb_voucher"
    __table_args__ = (Index("ix_tb_voucher_shop_id", "shop_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("tb_shop.id"), nullable=False)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    sub_title: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    rules: Mapped[str] = mapped_column(String(1024), default="", nullable=False)
    pay_value: Mapped[int] = mapped_column(BigInteger, nullable=False)  # cents
    actual_value: Mapped[int] = mapped_column(BigInteger, nullable=False)  # cents
    type: Mapped[int] = mapped_column(SmallInteger, default=0, nullable=False)  # 1 = seckill
    status: Mapped[int] = mapped_column(SmallInteger, default=1, nullable=False)


class SeckillVoucher(TimestampMixin, Base):
    __tablename__ = "tb_seckill_voucher"

    voucher_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("tb_voucher.id", ondelete="CASCADE"), primary_key=True
    )
    stock: Mapped[int] = mapped_column(Integer, nullable=False)
    begin_time: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    end_time: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class VoucherOrder(TimestampMixin, Base):
    """One order per user per voucher; the id comes from the Redis ID worker."""

    __tablename__ = "tb_voucher_order"
    __table_args__ = (
        UniqueConstraint("user_id", "voucher_id", name="uq_voucher_order_user_voucher"),
        Index("ix_tb_voucher_order_voucher_id", "voucher_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigId, nullable=False)
    voucher_id: Mapped[int] = mapped_column(BigId, nullable=False)
    pay_type: Mapped[int] = mapped_column(SmallInteger, default=1, nullable=False)
    status: Mapped[int] = mapped_column(SmallInteger, default=1, nullable=False)  # 1 = unpaid
    pay_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    use_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    refund_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Blog(TimestampMixin, Base):
    __tablename__ = "tb_blog"
    __table_args__ = (
        Index("ix_tb_blog_user_id", "user_id"),
        Index("ix_tb_blog_liked", "liked"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(BigId, nullable=False)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("tb_user.id"), nullable=False)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    images: Mapped[str] = mapped_column(String(2048), default="", nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    liked: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    comments: Mapped[int] = mapped_column(Integer, default=0, nullable=False)


class BlogComment(TimestampMixin, Base):
    __tablename__ = "tb_blog_comments"
    __table_args__ = (Index("ix_tb_blog_comments_blog_id", "blog_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("tb_user.id"), nullable=False)
    blog_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("tb_blog.id", ondelete="CASCADE"), nullable=False
    )
    parent_id: Mapped[int] = mapped_column(BigId, default=0, nullable=False)
    answer_id: Mapped[int] = mapped_column(BigId, default=0, nullable=False)
    content: Mapped[str] = mapped_column(String(255), nullable=False)
    liked: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    status: Mapped[int] = mapped_column(SmallInteger, default=0, nullable=False)


class Follow(Base):
    __tablename__ = "tb_follow"
    __table_args__ = (
        UniqueConstraint("user_id", "follow_user_id", name="uq_follow_pair"),
        Index("ix_tb_follow_follow_user_id", "follow_user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("tb_user.id"), nullable=False)
    follow_user_id: Mapped[int] = mapped_column(BigId, ForeignKey("tb_user.id"), nullable=False)
    create_time: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, server_default=func.now(), nullable=False
    )


class Upload(Base):
    """An image uploaded with POST /upload/blog: who may delete it, and what it is.

    ``path`` is relative to the images root, as the upload answered it
    (``/blogs/3/7/<uuid>.jpg``); the file itself lives on disk.
    """

    __tablename__ = "tb_upload"
    __table_args__ = (Index("ix_tb_upload_user_id", "user_id"),)

    path: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("tb_user.id"), nullable=False)
    media_type: Mapped[str] = mapped_column(String(16), nullable=False)  # image/jpeg ...
    size: Mapped[int] = mapped_column(Integer, nullable=False)  # bytes
    create_time: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, server_default=func.now(), nullable=False
    )
