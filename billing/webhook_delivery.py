"""The worker side of webhooks: outbox → events (ingest), then claim → POST → record.

Both steps are safe in several workers at once. Ingest claims outbox messages with
SKIP LOCKED and inserts events idempotently (unique source key). Delivery claims due
events with SKIP LOCKED and commits the attempt number plus a lease before any HTTP call,
so no other worker can pick the same event while it is in flight; the HTTP call runs with
no transaction open; the outcome is recorded in a second, short transaction.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpcore
import httpx
import structlog
from sqlalchemy import func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Agency, WebhookAttempt, WebhookEvent
from billing.webhooks import (
    EVENTS,
    RETRY_SCHEDULE,
    TOPIC,
    body_bytes,
    decrypt_secret,
    is_public,
    sign,
)
from kernel import crypto, outbox

__all__ = [
    "Deliverer",
    "ingest",
    "vetted_addresses",
]

log = structlog.get_logger(__name__)

_EXCERPT_BYTES = 1024
_EXCERPT_CHARS = 500
USER_AGENT = "paygate-webhooks/1"


# ------------------------------------------------------------------ where we may connect


async def vetted_addresses(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses to connect to for an agency's endpoint host, after vetting them.

    Agencies choose webhook URLs, so an unvetted one could make the worker POST into our
    own network (PostgreSQL, Redis, cloud metadata). Every address the name resolves to
    must be public unless `allow_private` (development and tests); the connection then goes
    to a vetted address itself, so a second, different DNS answer cannot slip in.
    """
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise httpcore.ConnectError(f"{host} has no address")
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise httpcore.ConnectError(
                    f"address_not_allowed: {host} resolves to non-public {address}"
                )
    return list(dict.fromkeys(str(a) for a in addresses))


class _VettingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to vetted addresses. The pool still
    keys connections by host name, and TLS still verifies the name, not the address."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, *, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await vetted_addresses(host, port, allow_private=self._allow_private)
        # In resolver order, falling back as a plain connect would (e.g. IPv6 unreachable).
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # vetted_addresses never returns an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        del path, timeout, socket_options
        raise httpcore.ConnectError("webhooks are never sent to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _vetting_transport(limits: httpx.Limits, *, allow_private: bool) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    # httpx builds its httpcore pool without a way to pass a network backend; swap it in
    # here, the one place that knows (tests fail loudly if httpx ever renames these).
    pool = transport._pool
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    pool._network_backend = _VettingBackend(
        pool._network_backend,
        allow_private=allow_private,
    )
    return transport


# ------------------------------------------------------------------ ingest


def _parse(payload: dict[str, Any]) -> tuple[uuid.UUID, str, uuid.UUID | None, dict[str, Any]]:
    """Validate an outbox payload; ValueError for a message that can never become an event."""
    event = payload.get("event")
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise ValueError("data is not an object")
    raw_bill = payload.get("bill_id")
    bill_id = uuid.UUID(str(raw_bill)) if raw_bill is not None else None
    return uuid.UUID(str(payload.get("agency_id"))), str(event), bill_id, data


async def ingest(sessions: async_sessionmaker[AsyncSession], limit: int = 200) -> int:
    """Turn committed `webhook.event` outbox messages into event rows; returns how many."""
    async with sessions() as session, session.begin():
        messages = await outbox.claim(session, TOPIC, limit)
        if not messages:
            return 0
        parsed: dict[int, tuple[uuid.UUID, str, uuid.UUID | None, dict[str, Any]]] = {}
        poison: dict[int, str] = {}
        for m in messages:
            try:
                parsed[m.id] = _parse(m.payload)
            except ValueError as exc:
                poison[m.id] = str(exc)
        agency_ids = {p[0] for p in parsed.values()}
        known = set(
            (await session.scalars(select(Agency.id).where(Agency.id.in_(agency_ids)))).all()
        )
        rows = []
        for m in messages:
            if m.id not in parsed:
                continue
            agency_id, event, bill_id, data = parsed[m.id]
            if agency_id not in known:
                poison[m.id] = f"unknown agency {agency_id}"
                continue
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "agency_id": agency_id,
                    "event": event,
                    "bill_id": bill_id,
                    "source_key": m.key,
                    "payload": data,
                    "created_at": m.created_at,
                    "status": "PENDING",
                    "next_attempt_at": func.now(),
                }
            )
        if rows:
            await session.execute(
                insert(WebhookEvent)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["source_key"])
            )
        now = (await session.execute(select(func.now()))).scalar_one()
        for m in messages:
            outbox.done(m, now)
            if m.id in poison:
                # Kept (processed, with the reason) for an operator; retrying cannot help.
                m.last_error = poison[m.id]
                log.error("webhook outbox message rejected", outbox_id=m.id, reason=poison[m.id])
    log.info("webhook events ingested", count=len(rows), rejected=len(poison))
    return len(messages)


# ------------------------------------------------------------------ delivery


@dataclass(frozen=True, slots=True)
class _Claimed:
    event_id: uuid.UUID
    agency_id: uuid.UUID
    event: str
    created_at: datetime
    data: dict[str, Any]
    attempt_no: int
    failures: int
    url: str | None
    secret_enc: bytes | None


@dataclass(frozen=True, slots=True)
class _Outcome:
    claimed: _Claimed
    at: datetime
    url: str | None
    status_code: int | None
    error: str | None
    duration_ms: int
    excerpt: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def next_delay(failures: int) -> timedelta | None:
    """Delay after `failures` consecutive failures; None once the schedule is exhausted."""
    return RETRY_SCHEDULE[failures - 1] if failures <= len(RETRY_SCHEDULE) else None


class Deliverer:
    """Sends due webhook events. One per worker process: it owns one pooled HTTP client."""

    def __init__(
        self,
        *,
        timeout_ms: int,
        max_connections: int = 20,
        batch_size: int = 50,
        allow_private: bool = False,
    ) -> None:
        self.timeout_s = timeout_ms / 1000
        self.allow_private = allow_private
        self.max_connections = max_connections
        self.batch_size = batch_size
        # The lease outlives the slowest possible send (deadline per request, plus a batch
        # queued on the pool), so an event is never claimed twice while in flight.
        waves = -(-batch_size // max_connections)
        self.lease = timedelta(seconds=self.timeout_s * waves + 60)
        self._client: httpx.AsyncClient | None = None
        # A send's deadline starts once it holds a connection slot, so a batch larger than
        # the pool queues here instead of timing out while waiting for the pool.
        self._slots = asyncio.Semaphore(max_connections)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            )
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,  # a redirect is a failure, never a second target
                transport=_vetting_transport(limits, allow_private=self.allow_private),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> Deliverer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def deliver_due(self, sessions: async_sessionmaker[AsyncSession]) -> int:
        """One round: claim (commit) → POST concurrently (no transaction) → record (commit)."""
        claimed = await self._claim(sessions)
        if not claimed:
            return 0
        outcomes = await asyncio.gather(*(self._send(c) for c in claimed))
        await self._record(sessions, outcomes)
        return len(claimed)

    async def _claim(self, sessions: async_sessionmaker[AsyncSession]) -> list[_Claimed]:
        async with sessions() as session, session.begin():
            due = (
                select(WebhookEvent.id)
                .where(WebhookEvent.status == "PENDING", WebhookEvent.next_attempt_at <= func.now())
                .order_by(WebhookEvent.next_attempt_at)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
                .cte("due")
            )
            lease_end = func.now() + self.lease
            rows = (
                await session.execute(
                    update(WebhookEvent)
                    .where(WebhookEvent.id == due.c.id)
                    .values(
                        attempts=WebhookEvent.attempts + 1,
                        next_attempt_at=lease_end,
                        lease_until=lease_end,
                    )
                    .returning(
                        WebhookEvent.id,
                        WebhookEvent.agency_id,
                        WebhookEvent.event,
                        WebhookEvent.created_at,
                        WebhookEvent.payload,
                        WebhookEvent.attempts,
                        WebhookEvent.failures,
                    )
                )
            ).all()
            if not rows:
                return []
            endpoints = {
                a.id: (a.webhook_url, a.webhook_secret_enc)
                for a in (
                    await session.execute(
                        select(Agency.id, Agency.webhook_url, Agency.webhook_secret_enc).where(
                            Agency.id.in_({r.agency_id for r in rows})
                        )
                    )
                ).all()
            }
        return [
            _Claimed(
                event_id=r.id,
                agency_id=r.agency_id,
                event=r.event,
                created_at=r.created_at,
                data=r.payload,
                attempt_no=r.attempts,
                failures=r.failures,
                url=endpoints[r.agency_id][0],
                secret_enc=endpoints[r.agency_id][1],
            )
            for r in rows
        ]

    async def _send(self, c: _Claimed) -> _Outcome:
        # Sign, time and bound each send only once it holds a connection slot.
        async with self._slots:
            return await self._attempt(c)

    async def _attempt(self, c: _Claimed) -> _Outcome:
        at = datetime.now(UTC)
        started = time.monotonic()

        def outcome(status: int | None, error: str | None, excerpt: str | None) -> _Outcome:
            ms = int((time.monotonic() - started) * 1000)
            return _Outcome(c, at, c.url, status, error, ms, excerpt)

        if not c.url or c.secret_enc is None:
            return outcome(None, "endpoint_not_configured", None)
        try:
            secret = decrypt_secret(c.agency_id, c.secret_enc)
        except crypto.DecryptError:
            log.error("webhook secret cannot be decrypted", agency_id=str(c.agency_id))
            return outcome(None, "secret_unreadable", None)
        body = body_bytes(c.event_id, c.event, c.created_at, c.data)
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Paygate-Event-Id": str(c.event_id),
            "Paygate-Event-Type": c.event,
            "Paygate-Delivery-Attempt": str(c.attempt_no),
            "Paygate-Timestamp": str(ts),
            "Paygate-Signature": sign(secret, ts, body),
        }
        try:
            # httpx timeouts are per phase; this bounds the whole exchange.
            async with asyncio.timeout(self.timeout_s):
                async with self.client.stream("POST", c.url, content=body, headers=headers) as r:
                    chunk = b""
                    async for part in r.aiter_bytes():
                        chunk += part
                        if len(chunk) >= _EXCERPT_BYTES:
                            break  # the rest of a large answer is of no use to anyone
                    text = chunk[:_EXCERPT_BYTES].decode("utf-8", "replace").replace("\x00", "")
                    return outcome(r.status_code, None, text[:_EXCERPT_CHARS] or None)
        except (TimeoutError, httpx.TimeoutException):
            return outcome(None, f"timeout after {self.timeout_s:g}s", None)
        except httpx.HTTPError as exc:
            return outcome(None, f"{type(exc).__name__}: {exc}"[:500], None)
        except Exception as exc:
            # One bad endpoint (e.g. an unparsable URL) must not lose the batch's outcomes.
            log.warning("webhook send failed unexpectedly", exc_info=True, event_id=str(c.event_id))
            return outcome(None, f"{type(exc).__name__}: {exc}"[:500], None)

    async def _record(
        self, sessions: async_sessionmaker[AsyncSession], outcomes: list[_Outcome]
    ) -> None:
        """Attempts in one multi-row insert; event updates set-based, one per kind."""
        delivered: list[uuid.UUID] = []
        failed: list[tuple[uuid.UUID, int]] = []
        retry: dict[int, list[tuple[uuid.UUID, int]]] = {}  # failures → (event, attempt_no)
        for o in outcomes:
            c = o.claimed
            bound = log.bind(
                event_id=str(c.event_id),
                agency_id=str(c.agency_id),
                event=c.event,
                attempt_no=c.attempt_no,
                status_code=o.status_code,
                error=o.error,
            )
            if o.ok:
                delivered.append(c.event_id)
                bound.info("webhook delivered")
            elif next_delay(c.failures + 1) is None:
                failed.append((c.event_id, c.attempt_no))
                bound.error("ALERT webhook delivery failed permanently", alert=True)
            else:
                retry.setdefault(c.failures + 1, []).append((c.event_id, c.attempt_no))
                bound.warning("webhook delivery failed; retry scheduled")
        pending = WebhookEvent.status == "PENDING"
        # Only the current claim may reschedule or fail an event (a lapsed lease was
        # re-claimed by another worker, whose attempt number is higher).
        claim = tuple_(WebhookEvent.id, WebhookEvent.attempts)
        async with sessions() as session, session.begin():
            session.add_all(
                WebhookAttempt(
                    event_id=o.claimed.event_id,
                    attempt_no=o.claimed.attempt_no,
                    at=o.at,
                    url=o.url,
                    status_code=o.status_code,
                    error=o.error,
                    duration_ms=o.duration_ms,
                    response_excerpt=o.excerpt,
                )
                for o in outcomes
            )
            if delivered:
                # A 2xx is a fact even if our lease lapsed meanwhile: record it, once.
                await session.execute(
                    update(WebhookEvent)
                    .where(pending, WebhookEvent.id.in_(delivered))
                    .values(
                        status="DELIVERED",
                        delivered_at=func.now(),
                        next_attempt_at=None,
                        lease_until=None,
                        failures=0,
                    )
                )
            if failed:
                await session.execute(
                    update(WebhookEvent)
                    .where(pending, claim.in_(failed))
                    .values(
                        status="FAILED",
                        failures=WebhookEvent.failures + 1,
                        next_attempt_at=None,
                        lease_until=None,
                    )
                )
            for failures, claims in retry.items():
                delay = next_delay(failures)
                assert delay is not None
                await session.execute(
                    update(WebhookEvent)
                    .where(pending, claim.in_(claims))
                    .values(
                        failures=failures,
                        next_attempt_at=func.now() + delay,
                        lease_until=None,
                    )
                )
