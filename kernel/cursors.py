"""Keyset-pagination cursors: an opaque, URL-safe ``"<ISO timestamp>|<uuid>"``.

Shared by the bill and webhook-event listings; each caller maps a bad cursor to its own
error code, which its API already promises.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

__all__ = [
    "decode",
    "encode",
]


def encode(at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError (binascii.Error and UnicodeDecodeError are both) on a bad cursor."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    at, _, row_id = raw.partition("|")
    return datetime.fromisoformat(at), uuid.UUID(row_id)
