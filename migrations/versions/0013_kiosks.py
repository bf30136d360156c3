"""kiosks: the device registry, each device's confirmations by sequence number, its gaps

(Numbered 0013 when it was written; it follows 0014, which reached main first.)

Revision ID: 0013
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kiosk_devices",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("hall", sa.String(length=128), nullable=False),
        sa.Column("location", sa.String(length=256), server_default="", nullable=False),
        sa.Column("region_code", sa.String(length=6), nullable=False),
        sa.Column("agency_id", sa.Uuid(), nullable=True),
        sa.Column("owner_hall", sa.String(length=128), nullable=True),
        sa.Column("acquirer_merchant_id", sa.String(length=15), nullable=False),
        sa.Column("acquirer_terminal_id", sa.String(length=8), nullable=False),
        sa.Column("sign_alg", sa.String(length=8), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("key_version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("heartbeat_window_s", sa.Integer(), server_default="300", nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "sign_alg IN ('HMAC', 'SM2')", name=op.f("ck_kiosk_devices_sign_alg_known")
        ),
        sa.CheckConstraint(
            "(sign_alg = 'HMAC' AND secret_enc IS NOT NULL)"
            " OR (sign_alg = 'SM2' AND public_key IS NOT NULL)",
            name=op.f("ck_kiosk_devices_key_present"),
        ),
        sa.CheckConstraint(
            "agency_id IS NOT NULL OR owner_hall IS NOT NULL",
            name=op.f("ck_kiosk_devices_owner_present"),
        ),
        sa.CheckConstraint("heartbeat_window_s > 0", name=op.f("ck_kiosk_devices_window_positive")),
        sa.CheckConstraint("last_seq >= 0", name=op.f("ck_kiosk_devices_last_seq_not_negative")),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_kiosk_devices_agency_id_agencies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kiosk_devices")),
    )
    op.create_table(
        "kiosk_confirmations",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=True),
        sa.Column("payment_code", sa.String(length=20), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acquirer_ref", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("seq > 0", name=op.f("ck_kiosk_confirmations_seq_positive")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_kiosk_confirmations_amount_positive")),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["kiosk_devices.id"],
            name=op.f("fk_kiosk_confirmations_device_id_kiosk_devices"),
        ),
        sa.PrimaryKeyConstraint("device_id", "seq", name=op.f("pk_kiosk_confirmations")),
    )
    op.create_index(
        op.f("ix_kiosk_confirmations_acquirer_ref"), "kiosk_confirmations", ["acquirer_ref"]
    )
    op.create_table(
        "kiosk_gaps",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column(
            "detected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["kiosk_devices.id"], name=op.f("fk_kiosk_gaps_device_id_kiosk_devices")
        ),
        sa.PrimaryKeyConstraint("device_id", "seq", name=op.f("pk_kiosk_gaps")),
    )
    op.create_index(
        "ix_kiosk_gaps_open",
        "kiosk_gaps",
        ["device_id", "seq"],
        postgresql_where=sa.text("closed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_kiosk_gaps_open", table_name="kiosk_gaps")
    op.drop_table("kiosk_gaps")
    op.drop_index(op.f("ix_kiosk_confirmations_acquirer_ref"), table_name="kiosk_confirmations")
    op.drop_table("kiosk_confirmations")
    op.drop_table("kiosk_devices")
