"""Rows the social tests need (users, a shop, blogs, upload records), inserted directly: faster
than the full demo seed, and each test states exactly what exists."""

from __future__ import annotations

import uuid

from sqlalchemy import insert, select

from models.entities import Blog, Shop, ShopType, Upload, User, UserInfo


def make_users(services, count: int, start: int = 1) -> list[int]:
    """Users ``start..start+count-1`` (nick ``user_{id}``) with empty profiles.

    An id that has a row already (an admin session's, support/sessions.py) keeps it.
    """
    ids = list(range(start, start + count))
    with services.db.session() as session:
        taken = set(session.scalars(select(User.id).where(User.id.in_(ids))))
        ids = [i for i in ids if i not in taken]
        if not ids:
            return list(range(start, start + count))
        session.execute(
            insert(User),
            [{"id": i, "phone": f"137{i:08d}", "nick_name": f"user_{i}", "icon": ""} for i in ids],
        )
        session.execute(insert(UserInfo), [{"user_id": i} for i in ids])
    return list(range(start, start + count))


def make_shop(services, shop_id: int = 1, type_id: int = 1, x: float = 120.15, y: float = 30.28):
    """One shop (and its type, if missing)."""
    with services.db.session() as session:
        if session.get(ShopType, type_id) is None:
            session.add(ShopType(id=type_id, name=f"type {type_id}", icon="", sort=type_id))
            session.flush()
        session.add(Shop(id=shop_id, name=f"shop {shop_id}", type_id=type_id, x=x, y=y))
    return shop_id


def make_blog(services, user_id: int, shop_id: int = 1, liked: int = 0, title: str = "t") -> int:
    """A blog row written straight to the database."""
    with services.db.session() as session:
        blog = Blog(
            shop_id=shop_id, user_id=user_id, title=title, content="c", images="", liked=liked
        )
        session.add(blog)
        session.flush()
        return blog.id


def make_upload(services, user_id: int, extension: str = "jpg") -> str:
    """The record of an upload by ``user_id`` (no file: for the blog rules); its path."""
    name = uuid.uuid4()
    path = f"/blogs/{name.int & 0xF}/{(name.int >> 4) & 0xF}/{name}.{extension}"
    with services.db.session() as session:
        session.add(Upload(path=path, user_id=user_id, media_type="image/jpeg", size=1))
    return path
