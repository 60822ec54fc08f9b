"""flask seed loads demo data in bulk and is safe to re-run."""

import sqlalchemy as sa

from models import SeckillVoucher, Shop, ShopType, User, Voucher
from models.demo import DemoSize, load_demo_data


def _counts(db):
    with db.sessions() as s:
        return {
            m.__tablename__: s.scalar(sa.select(sa.func.count()).select_from(m))
            for m in (ShopType, User, Shop, Voucher, SeckillVoucher)
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
    assert admin.role == "admin"
    # realistic coordinates (Hangzhou) and every type used
    assert all(119.9 < shop.x < 120.4 and 30.1 < shop.y < 30.4 for shop in shops)
    assert len({shop.type_id for shop in shops}) == 10
