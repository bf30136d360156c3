"""ledger: pending lines, so postings never lock account balance rows

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_pending",
        sa.Column("line_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["line_id"], ["journal_lines.id"], name=op.f("fk_ledger_pending_line_id_journal_lines")
        ),
        sa.PrimaryKeyConstraint("line_id", name=op.f("pk_ledger_pending")),
    )


def downgrade() -> None:
    # Fold what is pending into the stored balances first, so nothing is lost.
    op.execute(
        "UPDATE ledger_accounts a SET balance = a.balance + s.total FROM"
        " (SELECT l.account_id, sum(l.amount) AS total FROM ledger_pending p"
        " JOIN journal_lines l ON l.id = p.line_id GROUP BY l.account_id) s"
        " WHERE a.id = s.account_id"
    )
    op.drop_table("ledger_pending")
