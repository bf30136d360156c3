"""bank modes: receipts.pay_mode (bank app, online bank, counter, e-CNY, ...), banks
registered in the database, channels' day-end account checks

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None

# Frozen here: a later change of the vocabulary is a migration of its own.
MODES = (
    "ALIPAY",
    "MOBILE_BANK",
    "ONLINE_BANK",
    "COUNTER",
    "ECNY",
    "BANK",
    "KIOSK",
    "POS",
    "OTHER",
)


def upgrade() -> None:
    op.add_column("receipts", sa.Column("pay_mode", sa.String(16), nullable=True))
    # Receipts from before: the bank never said which of its modes, so its family's.
    op.execute(
        "UPDATE receipts SET pay_mode = CASE"
        " WHEN channel = 'alipay' THEN 'ALIPAY'"
        " WHEN channel LIKE 'bank:%' OR channel = 'bank' THEN 'BANK'"
        " WHEN channel = 'kiosk' OR channel LIKE 'kiosk:%' THEN 'KIOSK'"
        " WHEN channel = 'pos' OR channel LIKE 'pos:%' THEN 'POS'"
        " ELSE 'OTHER' END"
    )
    op.alter_column("receipts", "pay_mode", nullable=False)
    op.create_check_constraint(
        "pay_mode_known", "receipts", "pay_mode IN ({})".format(", ".join(f"'{m}'" for m in MODES))
    )
    now = sa.text("now()")
    op.create_table(
        "banks",
        sa.Column("code", sa.String(11), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sign_method", sa.String(16), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("bank_public_key", sa.String(130), nullable=True),
        sa.Column("our_key_enc", sa.LargeBinary(), nullable=True),
        sa.Column("previous_secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("previous_public_key", sa.String(130), nullable=True),
        sa.Column("previous_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("key_version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.CheckConstraint("code ~ '^[0-9]{1,11}$'", name=op.f("ck_banks_code_digits")),
        sa.CheckConstraint(
            "sign_method IN ('HMAC-SHA256', 'SM2-SM3')", name=op.f("ck_banks_sign_method_known")
        ),
        sa.CheckConstraint(
            "(sign_method = 'HMAC-SHA256' AND secret_enc IS NOT NULL)"
            " OR (sign_method = 'SM2-SM3' AND bank_public_key IS NOT NULL"
            " AND our_key_enc IS NOT NULL)",
            name=op.f("ck_banks_keys_present"),
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_banks")),
    )
    op.create_table(
        "day_checks",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("content_hash", sa.LargeBinary(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column(
            "mismatches",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_day_checks")),
        sa.UniqueConstraint(
            "channel", "business_date", name=op.f("uq_day_checks_channel_business_date")
        ),
    )


def downgrade() -> None:
    op.drop_table("day_checks")
    op.drop_table("banks")
    op.drop_constraint("pay_mode_known", "receipts", type_="check")
    op.drop_column("receipts", "pay_mode")
