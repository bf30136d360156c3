"""bills.payer_name → payer_name_enc: the payer's name encrypted at rest like the ID number

Existing rows are encrypted here, in batches, with the data key the service uses
(`PAYGATE_DATA_KEY`, or the development key file), each bound to its bill by the associated
data `bills.payer_name:<bill id>` — the format billing.bills reads.

Revision ID: 0011
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

from kernel.crypto import keyring

revision = "0011"
down_revision = "0013"
branch_labels = None
depends_on = None

_BATCH = 5000


def _aad(bill_id: uuid.UUID) -> bytes:
    return f"bills.payer_name:{bill_id}".encode()


def upgrade() -> None:
    op.add_column("bills", sa.Column("payer_name_enc", sa.LargeBinary(), nullable=True))
    conn = op.get_bind()
    ring = keyring()
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT id, payer_name FROM bills WHERE payer_name_enc IS NULL ORDER BY id LIMIT :n"
            ),
            {"n": _BATCH},
        ).all()
        if not rows:
            break
        conn.execute(
            sa.text(
                "UPDATE bills b SET payer_name_enc = v.enc"
                " FROM unnest(CAST(:ids AS uuid[]), CAST(:encs AS bytea[])) AS v(id, enc)"
                " WHERE b.id = v.id"
            ),
            {
                "ids": [bid for bid, _ in rows],
                "encs": [ring.encrypt(name.encode(), aad=_aad(bid)) for bid, name in rows],
            },
        )
    op.alter_column("bills", "payer_name_enc", nullable=False)
    op.drop_column("bills", "payer_name")


def downgrade() -> None:
    op.add_column("bills", sa.Column("payer_name", sa.String(length=200), nullable=True))
    conn = op.get_bind()
    ring = keyring()
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT id, payer_name_enc FROM bills WHERE payer_name IS NULL ORDER BY id LIMIT :n"
            ),
            {"n": _BATCH},
        ).all()
        if not rows:
            break
        conn.execute(
            sa.text(
                "UPDATE bills b SET payer_name = v.name"
                " FROM unnest(CAST(:ids AS uuid[]), CAST(:names AS text[])) AS v(id, name)"
                " WHERE b.id = v.id"
            ),
            {
                "ids": [bid for bid, _ in rows],
                "names": [ring.decrypt(enc, aad=_aad(bid)).decode() for bid, enc in rows],
            },
        )
    op.alter_column("bills", "payer_name", nullable=False)
    op.drop_column("bills", "payer_name_enc")
