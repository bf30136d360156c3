"""agency webhooks: events and delivery attempts

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-21 20:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("agency_id", sa.Uuid(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("bill_id", sa.Uuid(), nullable=True),
        sa.Column("source_key", sa.String(length=128), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="PENDING", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('PENDING', 'DELIVERED', 'FAILED')",
            name=op.f("ck_webhook_events_status_known"),
        ),
        sa.CheckConstraint(
            "event IN ('bill.paid', 'bill.refunded', 'bill.expired', 'bill.cancelled', 'enote.issued')",
            name=op.f("ck_webhook_events_event_known"),
        ),
        sa.CheckConstraint(
            "(status = 'PENDING') = (next_attempt_at IS NOT NULL)",
            name=op.f("ck_webhook_events_pending_has_schedule"),
        ),
        sa.ForeignKeyConstraint(
            ["agency_id"],
            ["agencies.id"],
            name=op.f("fk_webhook_events_agency_id_agencies"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("source_key", name=op.f("uq_webhook_events_source_key")),
    )
    op.create_index(
        op.f("ix_webhook_events_next_attempt_at"),
        "webhook_events",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_index(
        op.f("ix_webhook_events_agency_id_created_at_id"),
        "webhook_events",
        ["agency_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_webhook_events_bill_id"), "webhook_events", ["bill_id"], unique=False)
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["webhook_events.id"],
            name=op.f("fk_webhook_attempts_event_id_webhook_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
        sa.UniqueConstraint(
            "event_id", "attempt_no", name=op.f("uq_webhook_attempts_event_id_attempt_no")
        ),
    )


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_index(op.f("ix_webhook_events_bill_id"), table_name="webhook_events")
    op.drop_index(op.f("ix_webhook_events_agency_id_created_at_id"), table_name="webhook_events")
    op.drop_index(
        op.f("ix_webhook_events_next_attempt_at"),
        table_name="webhook_events",
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.drop_table("webhook_events")
