"""batched_refunds: a treasury refund links to every batch that carries part of it

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("pk_batched_refunds", "batched_refunds", type_="primary")
    op.create_primary_key("pk_batched_refunds", "batched_refunds", ["refund_id", "batch_id"])


def downgrade() -> None:
    # One link per refund again: keep the first batch's (the old behaviour's choice).
    op.execute(
        "DELETE FROM batched_refunds b USING batched_refunds k"
        " WHERE b.refund_id = k.refund_id AND b.batch_id > k.batch_id"
    )
    op.drop_constraint("pk_batched_refunds", "batched_refunds", type_="primary")
    op.create_primary_key("pk_batched_refunds", "batched_refunds", ["refund_id"])
