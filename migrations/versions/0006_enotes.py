"""fiscal e-notes (enotes) and their gap-free number counters (enote_counters)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 20:34:48.421884
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enote_counters",
        sa.Column("note_code", sa.String(length=8), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "last_number >= 0", name=op.f("ck_enote_counters_last_number_non_negative")
        ),
        sa.PrimaryKeyConstraint("note_code", name=op.f("pk_enote_counters")),
    )
    op.create_table(
        "enotes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="VALID", nullable=False),
        sa.Column("note_code", sa.String(length=8), nullable=False),
        sa.Column("note_number", sa.String(length=10), nullable=False),
        sa.Column("check_code", sa.String(length=6), nullable=False),
        sa.Column("agency_id", sa.Uuid(), nullable=False),
        sa.Column("bill_id", sa.Uuid(), nullable=False),
        sa.Column("receipt_id", sa.Uuid(), nullable=False),
        sa.Column("refund_id", sa.Uuid(), nullable=True),
        sa.Column("original_id", sa.Uuid(), nullable=True),
        sa.Column("total_amount", sa.BigInteger(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("signature_algorithm", sa.String(length=16), nullable=False),
        sa.Column("issuer_signature", sa.LargeBinary(), nullable=False),
        sa.Column("issuer_key_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_cert_serial", sa.String(length=64), nullable=False),
        sa.Column("issuer_signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("supervisor_signature", sa.LargeBinary(), nullable=False),
        sa.Column("supervisor_key_id", sa.String(length=64), nullable=False),
        sa.Column("supervisor_cert_serial", sa.String(length=64), nullable=False),
        sa.Column("supervisor_signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(kind = 'RED' AND total_amount < 0 AND original_id IS NOT NULL AND refund_id IS NOT NULL) OR (kind = 'BLUE' AND total_amount > 0 AND (refund_id IS NULL) = (original_id IS NULL))",
            name=op.f("ck_enotes_shape_by_kind"),
        ),
        sa.CheckConstraint("check_code ~ '^[0-9]{6}$'", name=op.f("ck_enotes_check_code_6_digits")),
        sa.CheckConstraint("kind IN ('BLUE', 'RED')", name=op.f("ck_enotes_kind_known")),
        sa.CheckConstraint("note_code ~ '^[0-9]{8}$'", name=op.f("ck_enotes_note_code_8_digits")),
        sa.CheckConstraint(
            "note_number ~ '^[0-9]{10}$'", name=op.f("ck_enotes_note_number_10_digits")
        ),
        sa.CheckConstraint(
            "status IN ('VALID', 'RED_LETTERED')", name=op.f("ck_enotes_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_enotes_agency_id_agencies")
        ),
        sa.ForeignKeyConstraint(["bill_id"], ["bills.id"], name=op.f("fk_enotes_bill_id_bills")),
        sa.ForeignKeyConstraint(
            ["original_id"], ["enotes.id"], name=op.f("fk_enotes_original_id_enotes")
        ),
        sa.ForeignKeyConstraint(
            ["receipt_id"], ["receipts.id"], name=op.f("fk_enotes_receipt_id_receipts")
        ),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refunds.id"], name=op.f("fk_enotes_refund_id_refunds")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enotes")),
        sa.UniqueConstraint(
            "note_code", "note_number", name=op.f("uq_enotes_note_code_note_number")
        ),
    )
    op.create_index(op.f("ix_enotes_bill_id"), "enotes", ["bill_id"], unique=False)
    op.create_index(
        "uq_enotes_receipt_original",
        "enotes",
        ["receipt_id"],
        unique=True,
        postgresql_where=sa.text("refund_id IS NULL"),
    )
    op.create_index(
        "uq_enotes_refund_kind",
        "enotes",
        ["refund_id", "kind"],
        unique=True,
        postgresql_where=sa.text("refund_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_enotes_refund_kind",
        table_name="enotes",
        postgresql_where=sa.text("refund_id IS NOT NULL"),
    )
    op.drop_index(
        "uq_enotes_receipt_original",
        table_name="enotes",
        postgresql_where=sa.text("refund_id IS NULL"),
    )
    op.drop_index(op.f("ix_enotes_bill_id"), table_name="enotes")
    op.drop_table("enotes")
    op.drop_table("enote_counters")
