"""Payers' personal data at rest: each field encrypted with the data key (kernel.crypto) and
bound to its bill, so a value copied onto another bill does not decrypt. Billing's modules
and the e-notes read names through here, never from a clear column.
"""

from __future__ import annotations

import hmac
import unicodedata
import uuid

from billing.models import Bill
from kernel.crypto import keyring

__all__ = [
    "field_aad",
    "open_payer_name",
    "payer_name_matches",
    "payer_name_of",
    "seal_payer_name",
]


def field_aad(column: str, bill_id: uuid.UUID) -> bytes:
    """The associated data of a bill's encrypted field: `bills.<column>:<bill id>`."""
    return f"bills.{column}:{bill_id}".encode()


def seal_payer_name(bill_id: uuid.UUID, name: str) -> bytes:
    """The payer's name as stored: encrypted at rest, bound to its bill."""
    return keyring().encrypt(name.encode(), aad=field_aad("payer_name", bill_id))


def open_payer_name(bill_id: uuid.UUID, sealed: bytes) -> str:
    """The payer's name in full from its stored token (for those allowed to see it)."""
    return keyring().decrypt(sealed, aad=field_aad("payer_name", bill_id)).decode()


def payer_name_of(bill: Bill) -> str:
    """The payer's name in full (for those allowed to see it)."""
    return open_payer_name(bill.id, bill.payer_name_enc)


def _comparable_name(name: str) -> bytes:
    # Full-width letters, letter case and spaces are how people mistype a name they know.
    return "".join(unicodedata.normalize("NFKC", name).casefold().split()).encode()


def payer_name_matches(bill: Bill, given: str) -> bool:
    """Whether `given` is the payer's name (a second factor; constant-time compare)."""
    return hmac.compare_digest(_comparable_name(payer_name_of(bill)), _comparable_name(given))
