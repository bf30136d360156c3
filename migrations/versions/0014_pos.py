"""MIS-POS terminals: registry, transactions (with reversal tombstones), settled batches;
receipts and attempts learn REVERSED (a payment the channel took back before settlement)

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

_ATTEMPT_STATUSES = "'CREATED', 'PENDING', 'SUCCEEDED', 'FAILED', 'CLOSED', 'UNKNOWN'"


def upgrade() -> None:
    op.create_table(
        "pos_terminals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("merchant_id", sa.String(length=15), nullable=False),
        sa.Column("terminal_id", sa.String(length=8), nullable=False),
        sa.Column("agency_id", sa.Uuid(), nullable=False),
        sa.Column("counter", sa.String(length=64), nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=True),
        sa.Column("key_enc", sa.LargeBinary(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "merchant_id ~ '^[0-9]{15}$'", name=op.f("ck_pos_terminals_merchant_id_shape")
        ),
        sa.CheckConstraint(
            "terminal_id ~ '^[0-9A-Z]{8}$'", name=op.f("ck_pos_terminals_terminal_id_shape")
        ),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_pos_terminals_agency_id_agencies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pos_terminals")),
        sa.UniqueConstraint(
            "merchant_id", "terminal_id", name=op.f("uq_pos_terminals_merchant_id_terminal_id")
        ),
    )
    op.create_table(
        "pos_transactions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("terminal_ref", sa.Uuid(), nullable=False),
        sa.Column("batch_no", sa.String(length=6), nullable=False),
        sa.Column("trace_no", sa.String(length=6), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("payment_code", sa.String(length=32), nullable=True),
        sa.Column("bill_id", sa.Uuid(), nullable=True),
        sa.Column("attempt_id", sa.Uuid(), nullable=True),
        sa.Column("original_id", sa.Uuid(), nullable=True),
        sa.Column("refund_id", sa.Uuid(), nullable=True),
        sa.Column("rrn", sa.String(length=12), nullable=True),
        sa.Column("card", sa.String(length=19), nullable=True),
        sa.Column("card_type", sa.String(length=8), nullable=True),
        sa.Column("acquirer", sa.String(length=11), nullable=True),
        sa.Column("issuer", sa.String(length=11), nullable=True),
        sa.Column("operator", sa.String(length=16), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settle_date", sa.String(length=4), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "kind IN ('SALE', 'VOID', 'REFUND')", name=op.f("ck_pos_transactions_kind_known")
        ),
        sa.CheckConstraint(
            "status IN ('ACCEPTED', 'REVERSED', 'VOIDED')",
            name=op.f("ck_pos_transactions_status_known"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_pos_transactions_amount_positive")),
        sa.ForeignKeyConstraint(
            ["terminal_ref"],
            ["pos_terminals.id"],
            name=op.f("fk_pos_transactions_terminal_ref_pos_terminals"),
        ),
        sa.ForeignKeyConstraint(
            ["bill_id"], ["bills.id"], name=op.f("fk_pos_transactions_bill_id_bills")
        ),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["payment_attempts.id"],
            name=op.f("fk_pos_transactions_attempt_id_payment_attempts"),
        ),
        sa.ForeignKeyConstraint(
            ["original_id"],
            ["pos_transactions.id"],
            name=op.f("fk_pos_transactions_original_id_pos_transactions"),
        ),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refunds.id"], name=op.f("fk_pos_transactions_refund_id_refunds")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pos_transactions")),
        sa.UniqueConstraint(
            "terminal_ref",
            "batch_no",
            "trace_no",
            name=op.f("uq_pos_transactions_terminal_ref_batch_no_trace_no"),
        ),
    )
    op.create_table(
        "pos_batches",
        sa.Column("terminal_ref", sa.Uuid(), nullable=False),
        sa.Column("batch_no", sa.String(length=6), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("terminal_totals", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("our_totals", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("differences", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column(
            "settled_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "status IN ('BALANCED', 'MISMATCHED')", name=op.f("ck_pos_batches_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["terminal_ref"],
            ["pos_terminals.id"],
            name=op.f("fk_pos_batches_terminal_ref_pos_terminals"),
        ),
        sa.PrimaryKeyConstraint("terminal_ref", "batch_no", name=op.f("pk_pos_batches")),
    )
    # A payment the channel took back before settlement (POS reversal or void): the
    # receipt stays as the record, no longer a payment; its attempt is REVERSED.
    op.drop_constraint(op.f("ck_receipts_kind_known"), "receipts", type_="check")
    op.create_check_constraint(
        op.f("ck_receipts_kind_known"), "receipts", "kind IN ('PAYMENT', 'DUPLICATE', 'REVERSED')"
    )
    op.drop_constraint(op.f("ck_payment_attempts_status_known"), "payment_attempts", type_="check")
    op.create_check_constraint(
        op.f("ck_payment_attempts_status_known"),
        "payment_attempts",
        f"status IN ({_ATTEMPT_STATUSES}, 'REVERSED')",
    )


def downgrade() -> None:
    op.execute("UPDATE receipts SET kind = 'DUPLICATE' WHERE kind = 'REVERSED'")
    op.execute("UPDATE payment_attempts SET status = 'FAILED' WHERE status = 'REVERSED'")
    op.drop_constraint(op.f("ck_payment_attempts_status_known"), "payment_attempts", type_="check")
    op.create_check_constraint(
        op.f("ck_payment_attempts_status_known"),
        "payment_attempts",
        f"status IN ({_ATTEMPT_STATUSES})",
    )
    op.drop_constraint(op.f("ck_receipts_kind_known"), "receipts", type_="check")
    op.create_check_constraint(
        op.f("ck_receipts_kind_known"), "receipts", "kind IN ('PAYMENT', 'DUPLICATE')"
    )
    op.drop_table("pos_batches")
    op.drop_table("pos_transactions")
    op.drop_table("pos_terminals")
