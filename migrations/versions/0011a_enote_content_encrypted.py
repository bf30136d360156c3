"""enotes.content → content_enc: the signed note names the payer, so it is encrypted at rest
like the payer's name on the bill

Existing rows are encrypted here, in batches, with the data key the service uses
(`PAYGATE_DATA_KEY`, or the development key file), each bound to its note by the associated
data `enotes.content:<note id>` — the format enotes.models reads. The bytes themselves do
not change: signatures over them still verify.

Revision ID: 0011a
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kernel.crypto import keyring

revision = "0011a"
down_revision = "0010"
branch_labels = None
depends_on = None

_BATCH = 2000
_SELECT = "SELECT id, {src} FROM enotes WHERE {dst} IS NULL ORDER BY id LIMIT :n"
_UPDATE = (
    "UPDATE enotes t SET {dst} = v.value"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:values AS bytea[])) AS v(id, value)"
    " WHERE t.id = v.id"
)


def _convert(src: str, dst: str, *, seal: bool) -> None:
    """Copy `src` into the new column `dst` in batches, encrypting (`seal`) or decrypting."""
    conn = op.get_bind()
    ring = keyring()
    while True:
        rows = conn.execute(sa.text(_SELECT.format(src=src, dst=dst)), {"n": _BATCH}).all()
        if not rows:
            return
        values = []
        for note_id, value in rows:
            aad = f"enotes.content:{note_id}".encode()
            if seal:
                values.append(ring.encrypt(bytes(value), aad=aad))
            else:
                values.append(ring.decrypt(bytes(value), aad=aad))
        conn.execute(
            sa.text(_UPDATE.format(dst=dst)),
            {"ids": [note_id for note_id, _ in rows], "values": values},
        )


def upgrade() -> None:
    op.add_column("enotes", sa.Column("content_enc", sa.LargeBinary(), nullable=True))
    _convert("content", "content_enc", seal=True)
    op.alter_column("enotes", "content_enc", nullable=False)
    op.drop_column("enotes", "content")


def downgrade() -> None:
    op.add_column("enotes", sa.Column("content", sa.LargeBinary(), nullable=True))
    _convert("content_enc", "content", seal=False)
    op.alter_column("enotes", "content", nullable=False)
    op.drop_column("enotes", "content_enc")
