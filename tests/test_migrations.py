"""Alembic creates the schema on SQLite and MariaDB, and round-trips."""

import sqlalchemy as sa

from models.entities import Base
from models.migrate import current_revision, downgrade, upgrade


def test_schema_matches_the_models(settings):
    url = settings.effective_database_url
    assert current_revision(url) is not None
    engine = sa.create_engine(url)
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {t.name for t in Base.metadata.sorted_tables} <= tables


def test_upgrade_is_idempotent_and_downgrade_round_trips(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    head = current_revision(url)
    upgrade(url)  # a second start-up changes nothing
    assert current_revision(url) == head
    downgrade(url)
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == head


def test_order_uniqueness_is_enforced_by_the_schema(services):
    from models import VoucherOrder

    with services.db.session() as session:
        session.add(VoucherOrder(id=1, user_id=7, voucher_id=9))
    try:
        with services.db.session() as session:
            session.add(VoucherOrder(id=2, user_id=7, voucher_id=9))
    except sa.exc.IntegrityError:
        pass
    else:
        raise AssertionError("a second order of one user for one voucher was accepted")
