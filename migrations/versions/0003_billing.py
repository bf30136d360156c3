"""billing: payment-code counters, auth nonce fallback, bills.late_fee_rule

Revision ID: 0003
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_code_counters",
        sa.Column("region_code", sa.String(length=6), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("next_value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("region_code", "year", name=op.f("pk_payment_code_counters")),
    )
    op.create_table(
        "auth_nonces",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("key_id", "nonce", name=op.f("pk_auth_nonces")),
    )
    op.create_index(op.f("ix_auth_nonces_expires_at"), "auth_nonces", ["expires_at"])
    op.add_column(
        "bills",
        sa.Column("late_fee_rule", sa.String(length=24), server_default="NONE", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("bills", "late_fee_rule")
    op.drop_index(op.f("ix_auth_nonces_expires_at"), table_name="auth_nonces")
    op.drop_table("auth_nonces")
    op.drop_table("payment_code_counters")
