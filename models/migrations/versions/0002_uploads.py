"""tb_upload: who uploaded which image (POST /upload/blog), so only they may delete it

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tb_upload",
        sa.Column("path", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("media_type", sa.String(length=16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime(),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["user_id"], ["tb_user.id"]),
        sa.PrimaryKeyConstraint("path"),
    )
    op.create_index("ix_tb_upload_user_id", "tb_upload", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_tb_upload_user_id", table_name="tb_upload")
    op.drop_table("tb_upload")
