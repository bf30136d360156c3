"""Agency webhooks: events from the transactional outbox, signed, delivered until one 2xx.

Flow
----
1. A state change calls :func:`emit` in its own transaction; that only inserts an outbox
   message (topic ``webhook.event``), so a rolled-back change never produces an event.
2. The worker's ingest job turns committed messages into durable ``webhook_events`` rows
   (the row id is the public event id) — see ``billing.webhook_delivery``.
3. The delivery job claims due events (``FOR UPDATE SKIP LOCKED``; the attempt number and a
   lease are committed BEFORE the HTTP call), POSTs with no transaction open, then records
   the attempt in ``webhook_attempts`` and either marks the event DELIVERED (first 2xx) or
   schedules the next try: 1 min, 5 min, 30 min, 2 h, 6 h, 24 h, then FAILED.

What the receiver gets
----------------------
``POST <agency webhook_url>`` with ``Content-Type: application/json`` and the body
``{"id": <event id>, "type": "bill.paid", "created_at": <ISO 8601>, "data": {...}}`` and headers

- ``Paygate-Event-Id``: the event id; the same on every retry and on a manual resend.
- ``Paygate-Event-Type``: the type, ``Paygate-Delivery-Attempt``: the attempt number.
- ``Paygate-Timestamp``: Unix seconds when this attempt was signed.
- ``Paygate-Signature``: ``t=<timestamp>,v1=<hex>`` where
  ``hex = HMAC-SHA256(key=<agency webhook secret, UTF-8>, msg=f"{t}.".encode() + raw_body)``.

Receivers must verify the signature over the RAW body bytes (before parsing JSON) with
:func:`verify_signature`, reject timestamps outside a tolerance (replays), and answer 2xx
quickly. Delivery is at-least-once at the wire: every event is retried until one 2xx is
recorded, and a 2xx is recorded once, but a worker crash between the receiver's answer and
the record (or a resend) repeats a delivery — receivers MUST dedupe by ``Paygate-Event-Id``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import msgspec
import structlog
from sqlalchemy import (
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import Agency, WebhookAttempt, WebhookEvent
from kernel import audit, crypto, cursors, outbox
from kernel.audit import Actor
from kernel.clock import SHANGHAI
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.outbox import Topic

__all__ = [
    "EVENTS",
    "RETRY_SCHEDULE",
    "TOPIC",
    "AttemptView",
    "EventFilter",
    "EventPage",
    "EventView",
    "body_bytes",
    "check_url",
    "decrypt_secret",
    "emit",
    "get_event",
    "is_public",
    "list_attempts",
    "list_events",
    "resend",
    "set_endpoint",
    "sign",
    "verify_signature",
]

log = structlog.get_logger(__name__)

TOPIC: Final = Topic.WEBHOOK
EVENTS: Final = frozenset(
    {
        "bill.paid",
        "bill.payment_reversed",
        "bill.refunded",
        "bill.expired",
        "bill.cancelled",
        "enote.issued",
    }
)
STATUSES: Final = ("PENDING", "DELIVERED", "FAILED")
RETRY_SCHEDULE: Final = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=6),
    timedelta(hours=24),
)
"""Delay before retry n (1-based) after n consecutive failures; one more failure → FAILED."""

SIGNATURE_HEADER: Final = "Paygate-Signature"
DEFAULT_TOLERANCE_S: Final = 300
_MAX_KEY = 128  # outbox.key length


# ------------------------------------------------------------------ producing events


async def emit(
    session: AsyncSession,
    *,
    agency_id: uuid.UUID,
    event: str,
    bill_id: uuid.UUID | None,
    data: dict[str, Any],
    dedupe_key: str,
) -> None:
    """Queue a webhook in the CALLER's transaction (delivered only if it commits).

    `dedupe_key` identifies the logical event (e.g. ``f"webhook:bill.paid:{bill_id}"``): a
    second emit with the same key is ignored. `data` must be JSON; `bill_id` is added to it
    when absent so the receiver always sees which bill the event concerns.
    """
    if event not in EVENTS:
        raise InvalidInput(f"unknown webhook event {event!r}", code="unknown_webhook_event")
    if not dedupe_key or len(dedupe_key) > _MAX_KEY:
        raise InvalidInput(f"dedupe_key must be 1..{_MAX_KEY} characters", code="invalid_key")
    body = dict(data)
    if bill_id is not None:
        body.setdefault("bill_id", str(bill_id))
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"webhook data is not JSON: {exc}", code="invalid_webhook_data") from exc
    payload = {
        "event": event,
        "agency_id": str(agency_id),
        "bill_id": str(bill_id) if bill_id is not None else None,
        "data": body,
    }
    await outbox.enqueue(session, TOPIC, dedupe_key, payload)


# ------------------------------------------------------------------ signing


def body_bytes(
    event_id: uuid.UUID, event: str, created_at: datetime, data: dict[str, Any]
) -> bytes:
    """The exact bytes POSTed (compact, sorted keys: equal on every attempt)."""
    doc = {
        "id": str(event_id),
        "type": event,
        "created_at": created_at.astimezone(SHANGHAI).isoformat(),
        "data": data,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``Paygate-Signature`` header value for `body` signed at `timestamp`."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: str | bytes,
    header: str,
    body: bytes,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> bool:
    """Receiver side: True iff `header` signs the raw `body` with `secret` and is fresh.

    Accepts several ``v1=`` values (so a sender may sign with two secrets during a
    rotation); compares in constant time; rejects a timestamp more than `tolerance_s`
    away from now (replay of an old, validly signed request).
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, c) for c in candidates)


# ------------------------------------------------------------------ agency endpoint


def secret_aad(agency_id: uuid.UUID) -> bytes:
    """Associated data binding an encrypted webhook secret to its agency row."""
    return b"agencies.webhook_secret_enc:" + agency_id.bytes


def decrypt_secret(agency_id: uuid.UUID, sealed: bytes) -> str:
    return crypto.decrypt(sealed, aad=secret_aad(agency_id)).decode()


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address webhooks may go to: globally routable unicast (not loopback, private,
    link-local, CGNAT, IPv4-mapped loopback, multicast)."""
    return address.is_global and not address.is_multicast


def check_url(url: str, *, allow_private: bool = False) -> str:
    """A webhook URL we will send to: absolute http(s), no credentials; in production https
    only and not obviously our own network. Names are vetted again at every delivery
    (webhook_delivery.vetted_addresses), since DNS can change after registration."""
    try:
        parsed = httpx.URL(url)  # exactly what the delivery client will have to parse
        _ = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidInput(f"webhook_url is not a valid URL: {exc}", code="invalid_url") from exc
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise InvalidInput("webhook_url must be an absolute http(s) URL", code="invalid_url")
    if parsed.userinfo:
        raise InvalidInput("webhook_url must not carry credentials", code="invalid_url")
    if allow_private:
        return url
    if parsed.scheme != "https":
        # Events carry bill and payment details; the signature protects integrity only.
        raise InvalidInput("webhook_url must use https", code="webhook_url_insecure")
    host = parsed.host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    private_ip = address is not None and not is_public(address)
    if host == "localhost" or host.endswith(".localhost") or private_ip:
        raise InvalidInput("webhook_url must be a public address", code="webhook_url_not_public")
    return url


async def set_endpoint(
    session: AsyncSession,
    agency_id: uuid.UUID,
    url: str,
    actor: Actor,
    *,
    allow_private: bool = False,
) -> str:
    """Set an agency's webhook URL with a NEW secret; returns the secret (shown once).

    Runs in the caller's transaction: commit to apply. The secret is stored encrypted.
    """
    agency = await session.get(Agency, agency_id, with_for_update=True)
    if agency is None:
        raise NotFound("agency not found", code="agency_not_found")
    agency.webhook_url = check_url(url, allow_private=allow_private)
    secret = "whsec_" + secrets.token_urlsafe(32)
    agency.webhook_secret_enc = crypto.encrypt(secret.encode(), aad=secret_aad(agency_id))
    audit.record(
        session,
        actor_type=actor.type,
        actor_id=actor.id,
        action="webhook.endpoint_set",
        object_type="agency",
        object_id=str(agency_id),
        detail={"url": agency.webhook_url},
    )
    return secret


# ------------------------------------------------------------------ query and resend


class EventView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    type: str
    bill_id: uuid.UUID | None
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    data: dict[str, Any]


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[EventView]
    next_cursor: str | None
    """Pass back as `cursor` for the next (older) page; None on the last page."""


class AttemptView(msgspec.Struct, frozen=True, kw_only=True):
    attempt_no: int
    at: datetime
    url: str | None
    status_code: int | None
    ok: bool
    error: str | None
    duration_ms: int
    response_excerpt: str | None


@dataclass(frozen=True, slots=True)
class EventFilter:
    type: str | None = None
    status: str | None = None
    bill_id: uuid.UUID | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    """Exclusive upper bound."""
    limit: int = 50


MAX_PAGE = 200


def _event_view(e: WebhookEvent) -> EventView:
    return EventView(
        id=e.id,
        type=e.event,
        bill_id=e.bill_id,
        status=e.status,
        attempts=e.attempts,
        created_at=e.created_at,
        next_attempt_at=e.next_attempt_at,
        delivered_at=e.delivered_at,
        data=e.payload,
    )


def _encode_cursor(e: WebhookEvent) -> str:
    return cursors.encode(e.created_at.astimezone(UTC), e.id)


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, event_id = cursors.decode(cursor)
        if created.tzinfo is None:
            raise ValueError("naive")
        return created, event_id
    except ValueError as exc:
        raise InvalidInput("invalid cursor", code="invalid_cursor") from exc


async def list_events(
    session: AsyncSession,
    agency_id: uuid.UUID,
    filters: EventFilter | None = None,
    cursor: str | None = None,
) -> EventPage:
    """An agency's events, newest first, keyset-paginated."""
    f = filters or EventFilter()
    if f.type is not None and f.type not in EVENTS:
        raise InvalidInput(f"unknown event type {f.type!r}", code="unknown_webhook_event")
    if f.status is not None and f.status not in STATUSES:
        raise InvalidInput(f"unknown status {f.status!r}", code="invalid_status")
    if not 1 <= f.limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be 1..{MAX_PAGE}", code="invalid_limit")
    stmt = select(WebhookEvent).where(WebhookEvent.agency_id == agency_id)
    if f.type is not None:
        stmt = stmt.where(WebhookEvent.event == f.type)
    if f.status is not None:
        stmt = stmt.where(WebhookEvent.status == f.status)
    if f.bill_id is not None:
        stmt = stmt.where(WebhookEvent.bill_id == f.bill_id)
    if f.created_from is not None:
        stmt = stmt.where(WebhookEvent.created_at >= f.created_from)
    if f.created_to is not None:
        stmt = stmt.where(WebhookEvent.created_at < f.created_to)
    if cursor:
        at, last_id = _decode_cursor(cursor)
        stmt = stmt.where(tuple_(WebhookEvent.created_at, WebhookEvent.id) < tuple_(at, last_id))
    stmt = stmt.order_by(WebhookEvent.created_at.desc(), WebhookEvent.id.desc()).limit(f.limit + 1)
    rows = list((await session.scalars(stmt)).all())
    more = len(rows) > f.limit
    rows = rows[: f.limit]
    return EventPage(
        items=[_event_view(e) for e in rows],
        next_cursor=_encode_cursor(rows[-1]) if more else None,
    )


async def _own_event(
    session: AsyncSession, agency_id: uuid.UUID, event_id: uuid.UUID, *, lock: bool = False
) -> WebhookEvent:
    stmt = select(WebhookEvent).where(
        WebhookEvent.id == event_id, WebhookEvent.agency_id == agency_id
    )
    event = (await session.scalars(stmt.with_for_update() if lock else stmt)).one_or_none()
    if event is None:
        # Another agency's event is indistinguishable from a missing one.
        raise NotFound("webhook event not found", code="webhook_event_not_found")
    return event


async def get_event(session: AsyncSession, agency_id: uuid.UUID, event_id: uuid.UUID) -> EventView:
    return _event_view(await _own_event(session, agency_id, event_id))


async def list_attempts(
    session: AsyncSession, agency_id: uuid.UUID, event_id: uuid.UUID
) -> list[AttemptView]:
    """Every delivery attempt of one of the agency's events, oldest first."""
    await _own_event(session, agency_id, event_id)
    rows = await session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.event_id == event_id)
        .order_by(WebhookAttempt.attempt_no)
    )
    return [
        AttemptView(
            attempt_no=a.attempt_no,
            at=a.at,
            url=a.url,
            status_code=a.status_code,
            ok=a.status_code is not None and 200 <= a.status_code < 300,
            error=a.error,
            duration_ms=a.duration_ms,
            response_excerpt=a.response_excerpt,
        )
        for a in rows
    ]


async def resend(
    session: AsyncSession, agency_id: uuid.UUID, event_id: uuid.UUID, actor: Actor
) -> EventView:
    """Re-queue one event for immediate delivery (same event id), with a fresh retry schedule.

    Runs in the caller's transaction: commit to apply. An event whose delivery is in flight
    right now is a Conflict (it would otherwise be sent twice at the same time).
    """
    event = await _own_event(session, agency_id, event_id, lock=True)
    db_now = (await session.execute(select(func.now()))).scalar_one()
    if event.lease_until is not None and event.lease_until > db_now:
        raise Conflict("a delivery of this event is in progress", code="webhook_in_flight")
    previous = event.status
    await session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event.id)
        .values(status="PENDING", failures=0, next_attempt_at=func.now(), lease_until=None)
        .execution_options(synchronize_session=False)
    )
    audit.record(
        session,
        actor_type=actor.type,
        actor_id=actor.id,
        action="webhook.resend",
        object_type="webhook_event",
        object_id=str(event.id),
        detail={"agency_id": str(agency_id), "previous_status": previous},
    )
    await session.flush()
    await session.refresh(event)
    log.info("webhook event re-queued", event_id=str(event.id), previous_status=previous)
    return _event_view(event)
