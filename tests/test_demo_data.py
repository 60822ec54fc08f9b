"""flask seed loads demo data in bulk and is safe to re-run."""

import re

import sqlalchemy as sa

from models import Blog, Follow, SeckillVoucher, Shop, ShopType, User, UserInfo, Voucher
from models.demo import (
    BLOGGERS,
    FRONT_END_AVATARS,
    FRONT_END_PHOTOS,
    DemoSize,
    blog_likers,
    follow_pairs,
    load_demo_data,
)


def _counts(db):
    with db.sessions() as s:
        return {
            m.__tablename__: s.scalar(sa.select(sa.func.count()).select_from(m))
            for m in (ShopType, User, Shop, Voucher, SeckillVoucher, Blog, Follow)
        }


def test_seed_cli_loads_small_data_and_rerun_adds_nothing(app, services):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["seed", "--small"])
    assert result.exit_code == 0, result.output
    size = DemoSize.named("small")
    first = _counts(services.db)
    assert first == {
        "tb_shop_type": 10,
        "tb_user": size.users + 1,  # + the admin
        "tb_shop": size.shops,
        "tb_voucher": size.vouchers,
        "tb_seckill_voucher": size.seckill_vouchers,
        "tb_blog": size.blogs,
        "tb_follow": len(follow_pairs(size.users)),
    }
    again = runner.invoke(args=["seed", "--small"])
    assert again.exit_code == 0, again.output
    assert _counts(services.db) == first


def test_interrupted_load_is_completed_by_the_next_one(services):
    size = DemoSize.named("small")
    with services.db.session() as s:  # as if a previous run stopped half way
        s.add(ShopType(id=1, name="美食", sort=1))
    inserted = load_demo_data(services.db, size)
    assert inserted["tb_shop_type"] == 9
    with services.db.sessions() as s:
        admin = s.scalar(sa.select(User).where(User.id == 1))
        shops = s.scalars(sa.select(Shop).limit(50)).all()
    assert admin.role == "user"  # the demo grants no role: admins are HMDP_ADMIN_PHONES
    # realistic coordinates (Hangzhou) and every type used
    assert all(119.9 < shop.x < 120.4 and 30.1 < shop.y < 30.4 for shop in shops)
    assert len({shop.type_id for shop in shops}) == 10


# --- a demo that renders offline in the hmdp front end ----------------------------------------

TYPE_ICON = re.compile(r"^/types/[A-Za-z]+\.png$")  # the front end shows '/imgs/' + icon


def _seed(app, services) -> None:
    load_demo_data(services.db, DemoSize.named("small"))
    for step in app.extensions["hmdp_post_seed"]:
        step(services)


def test_every_image_the_demo_names_is_one_the_front_end_ships(services):
    load_demo_data(services.db, DemoSize.named("small"))
    shipped = set(FRONT_END_PHOTOS) | set(FRONT_END_AVATARS)
    with services.db.sessions() as s:
        icons = list(s.scalars(sa.select(ShopType.icon)))
        avatars = [i for i in s.scalars(sa.select(User.icon)) if i]
        shop_images = [i for row in s.scalars(sa.select(Shop.images)) for i in row.split(",")]
        blog_images = [i for row in s.scalars(sa.select(Blog.images)) for i in row.split(",")]
    assert len(icons) == 10 and all(TYPE_ICON.match(i) for i in icons), icons
    assert avatars and set(avatars) <= shipped
    assert len(shop_images) == 3 * 500 and set(shop_images) <= set(FRONT_END_PHOTOS)
    assert blog_images and set(blog_images) <= set(FRONT_END_PHOTOS)
    assert all(p.startswith("/imgs/") and "://" not in p for p in shipped)


def test_the_home_page_feed_and_profiles_show_content(app, services, login_as):
    _seed(app, services)
    client = app.test_client()
    hot = client.get("/blog/hot").json["data"]
    assert len(hot) == 10
    assert all(b["images"].startswith("/imgs/blogs/") and b["name"] for b in hot)
    assert [b["liked"] for b in hot] == sorted((b["liked"] for b in hot), reverse=True)
    top = hot[0]
    assert top["liked"] == len(blog_likers(top["id"])) > 0
    likers = client.get(f"/blog/likes/{top['id']}").json["data"]
    assert [u["id"] for u in likers] == blog_likers(top["id"])[:5]  # in like order

    me = login_as(2)  # the demo login 13800000001: a blogger who follows three others
    followed = sorted(b for u, b in follow_pairs(200) if u == 2)
    assert followed == [4, 7, 11]
    feed = client.get("/blog/of/follow", headers=me).json["data"]
    assert len(feed["list"]) == 10 and {b["userId"] for b in feed["list"]} <= set(followed)
    times = [b["createTime"] for b in feed["list"]]
    assert times == sorted(times, reverse=True)
    assert client.get("/blog/of/me", headers=me).json["data"]  # my own blogs
    assert client.get("/follow/or/not/4", headers=me).json["data"] is True
    assert client.get("/follow/or/not/3", headers=me).json["data"] is False
    common = client.get("/follow/common/12", headers=me).json["data"]
    assert {u["id"] for u in common} == set(followed) & {b for u, b in follow_pairs(200) if u == 12}
    info = client.get("/user/info/2").json["data"]
    fans = sum(1 for _, b in follow_pairs(200) if b == 2)
    assert (info["followee"], info["fans"]) == (3, fans) and fans > 0
    assert client.get("/user/2").json["data"]["icon"] in FRONT_END_AVATARS
    assert client.get("/blog/of/user?id=4").json["data"]


def _redis_side(services) -> dict:
    r = services.redis
    with services.db.sessions() as s:
        liked = dict(s.execute(sa.select(Blog.id, Blog.liked)).all())
        counters = dict(s.execute(sa.select(UserInfo.user_id, UserInfo.fans)).all())
    return {
        "liked": liked,
        "zcard": {b: r.zcard(f"blog:liked:{b}") for b in liked},
        "feeds": {u: r.zcard(f"feed:{u}") for u in range(2, 202)},
        "fans": counters,
    }


def test_the_like_sets_equal_the_counters_and_a_second_seed_changes_nothing(app, services):
    _seed(app, services)
    first = _redis_side(services)
    assert first["zcard"] == first["liked"] and sum(first["liked"].values()) > 0
    assert all(n > 0 for n in first["feeds"].values())
    _seed(app, services)
    assert _redis_side(services) == first


def test_a_reseed_keeps_likes_made_since_and_restores_a_lost_redis(app, services, login_as):
    _seed(app, services)
    client = app.test_client()
    blog = next(b for b in range(1, 41) if 2 in blog_likers(b))
    assert client.put(f"/blog/like/{blog}", headers=login_as(2)).json["data"]["isLike"] is False
    before = _redis_side(services)
    _seed(app, services)  # the unlike is not undone
    assert _redis_side(services) == before
    assert before["zcard"][blog] == before["liked"][blog] == len(blog_likers(blog)) - 1
    services.redis.flushall()  # Redis state lost: the demo's sets and feeds come back
    _seed(app, services)
    after = _redis_side(services)
    assert after["zcard"] == {**after["liked"], blog: 0}  # that blog's likes cannot be rebuilt
    assert after["feeds"] == before["feeds"]


def test_follow_counters_move_with_the_rows_the_seed_adds(app, services):
    load_demo_data(services.db, DemoSize.named("small"))
    with services.db.session() as s:  # as if an older demo had no follows yet
        s.execute(sa.delete(Follow))
        s.execute(sa.update(UserInfo).values(fans=0, followee=0))
    inserted = load_demo_data(services.db, DemoSize.named("small"))
    assert inserted["tb_follow"] == len(follow_pairs(200))
    with services.db.sessions() as s:
        info = {u.user_id: u for u in s.scalars(sa.select(UserInfo))}
    for blogger in BLOGGERS:
        assert info[blogger].fans == sum(1 for _, b in follow_pairs(200) if b == blogger)
    assert all(info[u].followee == 3 for u in range(2, 202))
    assert load_demo_data(services.db, DemoSize.named("small"))["tb_follow"] == 0
