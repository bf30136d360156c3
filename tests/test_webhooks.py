"""Agency webhooks end to end: outbox → event → signed POST to a REAL HTTP receiver.

The receiver is uvicorn serving a small ASGI app on 127.0.0.1 (tests/webhook_receiver.py);
PostgreSQL is the fixtures' real one. Time moves by editing next_attempt_at, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpcore
import pytest
from sqlalchemy import func, select, update

from billing import webhooks as wh
from billing.models import Agency, WebhookEvent
from billing.webhook_delivery import Deliverer, ingest, vetted_addresses
from gateway.state import Resources
from gateway.worker import close_jobs, default_jobs, run_once
from kernel import outbox
from kernel.audit import Actor
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.models import AuditEntry, OutboxMessage
from tests.factories import make_agency
from tests.webhook_receiver import Receiver, ReceiverServer

SYSTEM = Actor(type="system", id="test")


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[ReceiverServer]:
    server = ReceiverServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver(receiver_server: ReceiverServer) -> Receiver:
    receiver_server.app.reset()
    return receiver_server.app


@dataclass(frozen=True)
class Hooked:
    id: uuid.UUID
    secret: str


async def _hooked_agency(res: Resources, url: str, name: str = "交警支队") -> Hooked:
    async with res.sessions() as s, s.begin():
        agency = await make_agency(s, name=name)
        secret = await wh.set_endpoint(s, agency.id, url, SYSTEM, allow_private=True)
    return Hooked(agency.id, secret)


@pytest.fixture
async def agency(res: Resources, receiver: Receiver) -> Hooked:
    return await _hooked_agency(res, receiver.url)


@pytest.fixture
async def deliverer() -> AsyncIterator[Deliverer]:
    async with _loopback() as d:
        yield d


def _loopback(timeout_ms: int = 3000, **kw: int) -> Deliverer:
    """A deliverer that may reach the test receiver on loopback (production may not)."""
    return Deliverer(timeout_ms=timeout_ms, allow_private=True, **kw)


async def _emit(
    res: Resources,
    agency_id: uuid.UUID,
    *,
    key: str | None = None,
    event: str = "bill.paid",
    data: dict[str, object] | None = None,
) -> None:
    async with res.sessions() as s, s.begin():
        await wh.emit(
            s,
            agency_id=agency_id,
            event=event,
            bill_id=uuid.uuid4(),
            data=data if data is not None else {"paid_amount": 20_000},
            dedupe_key=key or f"webhook:{event}:{uuid.uuid4()}",
        )


async def _pump(res: Resources, d: Deliverer) -> int:
    await ingest(res.sessions)
    return await d.deliver_due(res.sessions)


async def _events(res: Resources) -> list[WebhookEvent]:
    async with res.sessions() as s:
        return list((await s.scalars(select(WebhookEvent).order_by(WebhookEvent.created_at))).all())


async def _one_event(res: Resources) -> WebhookEvent:
    events = await _events(res)
    assert len(events) == 1
    return events[0]


async def _due_in(res: Resources, event_id: uuid.UUID) -> timedelta:
    async with res.sessions() as s:
        row = (
            await s.execute(
                select(WebhookEvent.next_attempt_at - func.now()).where(WebhookEvent.id == event_id)
            )
        ).scalar_one()
    assert isinstance(row, timedelta)
    return row


async def _time_passes(res: Resources) -> None:
    """Make every pending event due now (instead of waiting for its retry delay)."""
    async with res.sessions() as s, s.begin():
        await s.execute(
            update(WebhookEvent)
            .where(WebhookEvent.status == "PENDING")
            .values(next_attempt_at=func.now(), lease_until=None)
        )


# ------------------------------------------------------------------ exactly once


async def test_rolled_back_emit_sends_nothing_committed_once_sends_once(
    res: Resources, receiver: Receiver, agency: Hooked
) -> None:
    async with res.sessions() as s, s.begin():
        await wh.emit(
            s,
            agency_id=agency.id,
            event="bill.paid",
            bill_id=uuid.uuid4(),
            data={"paid_amount": 100},
            dedupe_key="webhook:rolled-back",
        )
        await s.rollback()
    async with (
        Deliverer(timeout_ms=3000, allow_private=True) as d1,
        Deliverer(timeout_ms=3000, allow_private=True) as d2,
    ):
        assert await ingest(res.sessions) == 0
        assert await d1.deliver_due(res.sessions) == 0
        assert receiver.received() == []

        await _emit(res, agency.id)
        assert await ingest(res.sessions) == 1
        # Two workers at once, then both again: one POST in total.
        rounds = await asyncio.gather(d1.deliver_due(res.sessions), d2.deliver_due(res.sessions))
        assert sorted(rounds) == [0, 1]
        rounds = await asyncio.gather(d1.deliver_due(res.sessions), d2.deliver_due(res.sessions))
        assert rounds == [0, 0]
    event = await _one_event(res)
    assert receiver.event_ids(answered=None) == [str(event.id)]
    assert event.status == "DELIVERED"
    assert event.delivered_at is not None
    assert event.next_attempt_at is None
    assert event.attempts == 1


async def test_many_events_many_workers_each_delivered_exactly_once(
    res: Resources, receiver: Receiver, agency: Hooked
) -> None:
    for _ in range(40):
        await _emit(res, agency.id)
    workers = [
        Deliverer(timeout_ms=3000, max_connections=4, batch_size=7, allow_private=True)
        for _ in range(3)
    ]
    try:
        await asyncio.gather(ingest(res.sessions), ingest(res.sessions))

        async def drain(d: Deliverer) -> None:
            while await d.deliver_due(res.sessions):
                pass

        await asyncio.gather(*(drain(d) for d in workers))
    finally:
        for d in workers:
            await d.aclose()
    events = await _events(res)
    assert len(events) == 40
    assert {e.status for e in events} == {"DELIVERED"}
    sent = receiver.event_ids(answered=None)
    assert len(sent) == 40
    assert set(sent) == {str(e.id) for e in events}


async def test_same_dedupe_key_twice_is_one_event(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    await _emit(res, agency.id, key="webhook:bill.paid:dup")
    await _emit(res, agency.id, key="webhook:bill.paid:dup")
    await _pump(res, deliverer)
    await _pump(res, deliverer)
    event = await _one_event(res)
    assert receiver.event_ids() == [str(event.id)]


# ------------------------------------------------------------------ retries


async def test_500_is_recorded_and_retried_after_one_minute(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    receiver.fail_next(1, status=500)
    await _emit(res, agency.id)
    assert await _pump(res, deliverer) == 1
    event = await _one_event(res)
    assert event.status == "PENDING"
    assert event.failures == 1
    assert timedelta(seconds=55) < await _due_in(res, event.id) <= timedelta(minutes=1)
    # Not due yet: another round sends nothing.
    assert await deliverer.deliver_due(res.sessions) == 0
    assert len(receiver.received()) == 1

    await _time_passes(res)
    assert await deliverer.deliver_due(res.sessions) == 1
    assert [r.answered for r in receiver.received()] == [500, 200]
    assert len(set(receiver.event_ids(answered=None))) == 1

    async with res.sessions() as s:
        attempts = await wh.list_attempts(s, agency.id, event.id)
        view = await wh.get_event(s, agency.id, event.id)
    assert [(a.attempt_no, a.status_code, a.ok) for a in attempts] == [
        (1, 500, False),
        (2, 200, True),
    ]
    assert attempts[0].response_excerpt == "boom"
    assert attempts[0].url == receiver.url
    assert view.status == "DELIVERED"
    assert view.attempts == 2


async def test_timeout_schedules_a_retry_and_is_not_lost(
    res: Resources, receiver: Receiver, agency: Hooked
) -> None:
    receiver.stall_next(1, seconds=3.0)
    async with _loopback(timeout_ms=400) as d:
        await _emit(res, agency.id)
        started = time.monotonic()
        assert await _pump(res, d) == 1
        assert time.monotonic() - started < 2.5  # the client gave up; it did not wait 3 s
        event = await _one_event(res)
        assert event.status == "PENDING"
        assert timedelta(seconds=55) < await _due_in(res, event.id) <= timedelta(minutes=1)
        async with res.sessions() as s:
            (first,) = await wh.list_attempts(s, agency.id, event.id)
        assert first.status_code is None
        assert first.error is not None
        assert first.error.startswith("timeout")

        await _time_passes(res)
        assert await d.deliver_due(res.sessions) == 1
    event = await _one_event(res)
    assert event.status == "DELIVERED"
    # The receiver saw the event twice (the stalled one and the retry): same id, for dedupe.
    assert receiver.event_ids(answered=None) == [str(event.id)] * 2


async def test_a_lapsed_claim_cannot_reschedule_over_the_new_owner(
    res: Resources, receiver: Receiver, agency: Hooked
) -> None:
    await _emit(res, agency.id)
    await ingest(res.sessions)
    async with (
        Deliverer(timeout_ms=3000, allow_private=True) as slow,
        Deliverer(timeout_ms=3000, allow_private=True) as fast,
    ):
        stale = await slow._claim(res.sessions)  # worker A claims, then stalls past its lease
        assert [c.attempt_no for c in stale] == [1]
        assert await fast.deliver_due(res.sessions) == 0  # leased: B cannot take it
        await _time_passes(res)  # A's lease lapses
        receiver.fail_next(2)
        assert await fast.deliver_due(res.sessions) == 1  # B: attempt 2 → 500, retry in 1 min
        event = await _one_event(res)
        await slow._record(res.sessions, [await slow._send(c) for c in stale])  # A: 500, late
    after = await _one_event(res)
    assert (after.failures, after.attempts) == (1, 2)  # A's stale failure changed nothing
    assert after.next_attempt_at == event.next_attempt_at
    async with res.sessions() as s:
        attempts = await wh.list_attempts(s, agency.id, event.id)
    assert [(a.attempt_no, a.status_code) for a in attempts] == [(1, 500), (2, 500)]


async def test_schedule_is_followed_then_failed_with_alert(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    receiver.fail_next(100, status=503)
    await _emit(res, agency.id)
    await ingest(res.sessions)
    event = await _one_event(res)
    for expected in wh.RETRY_SCHEDULE:
        assert await deliverer.deliver_due(res.sessions) == 1
        due = await _due_in(res, event.id)
        assert expected - timedelta(seconds=5) < due <= expected
        await _time_passes(res)
    assert await deliverer.deliver_due(res.sessions) == 1
    event = await _one_event(res)
    assert event.status == "FAILED"
    assert event.next_attempt_at is None
    assert event.attempts == len(wh.RETRY_SCHEDULE) + 1
    await _time_passes(res)
    assert await deliverer.deliver_due(res.sessions) == 0
    assert len(receiver.received()) == 7


async def test_agency_without_endpoint_records_attempt_and_retries(
    res: Resources, receiver: Receiver, deliverer: Deliverer
) -> None:
    async with res.sessions() as s, s.begin():
        agency = await make_agency(s)
    await _emit(res, agency.id)
    await _pump(res, deliverer)
    event = await _one_event(res)
    assert event.status == "PENDING"
    async with res.sessions() as s:
        (attempt,) = await wh.list_attempts(s, agency.id, event.id)
    assert attempt.error == "endpoint_not_configured"
    assert receiver.received() == []


async def test_a_broken_url_fails_alone_and_the_batch_is_recorded(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    broken = await _hooked_agency(res, receiver.url, name="考试院")
    async with res.sessions() as s, s.begin():
        agency_row = await s.get(Agency, broken.id)
        assert agency_row is not None
        agency_row.webhook_url = "http://[::1"  # bypasses set_endpoint's check on purpose
    await _emit(res, broken.id)
    await _emit(res, agency.id)
    assert await _pump(res, deliverer) == 2
    by_agency = {e.agency_id: e for e in await _events(res)}
    assert by_agency[agency.id].status == "DELIVERED"
    assert by_agency[broken.id].status == "PENDING"
    async with res.sessions() as s:
        (attempt,) = await wh.list_attempts(s, broken.id, by_agency[broken.id].id)
    assert attempt.error
    assert attempt.status_code is None


@pytest.mark.parametrize(
    "url",
    ["ftp://example.org/x", "http://[::1", "/relative", "https://user:pw@example.org/h", ""],
)
async def test_set_endpoint_rejects_bad_urls(res: Resources, url: str) -> None:
    async with res.sessions() as s:
        agency = await make_agency(s)
        with pytest.raises(InvalidInput) as info:
            await wh.set_endpoint(s, agency.id, url, SYSTEM)
        assert info.value.code == "invalid_url"
        assert agency.webhook_secret_enc is None


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://hooks.example.org/paygate", "webhook_url_insecure"),
        ("https://localhost/hook", "webhook_url_not_public"),
        ("https://api.localhost/hook", "webhook_url_not_public"),
        ("https://127.0.0.1:6379/", "webhook_url_not_public"),
        ("https://10.0.0.5/hook", "webhook_url_not_public"),
        ("https://169.254.169.254/latest/meta-data", "webhook_url_not_public"),
        ("https://[::1]/hook", "webhook_url_not_public"),
    ],
)
async def test_production_endpoints_are_https_and_not_our_network(
    res: Resources, url: str, code: str
) -> None:
    async with res.sessions() as s:
        agency = await make_agency(s)
        with pytest.raises(InvalidInput) as info:
            await wh.set_endpoint(s, agency.id, url, SYSTEM)
        assert info.value.code == code
        assert agency.webhook_url is None
        # A public https name is accepted; development may use loopback.
        assert await wh.set_endpoint(s, agency.id, "https://hooks.example.org/p", SYSTEM)
        assert await wh.set_endpoint(s, agency.id, url, SYSTEM, allow_private=True)


async def test_redirect_is_not_followed(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    receiver.fail_next(1, status=307)
    await _emit(res, agency.id)
    await _pump(res, deliverer)
    event = await _one_event(res)
    assert event.status == "PENDING"
    assert [r.answered for r in receiver.received()] == [307]


# ------------------------------------------------------------------ signature


async def test_signature_verifies_at_the_receiver_and_tampering_fails(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    await _emit(res, agency.id, event="enote.issued", data={"note_no": "0000000001", "名": "张三"})
    await _pump(res, deliverer)
    (req,) = receiver.received()
    header = req.headers["paygate-signature"]
    assert wh.verify_signature(agency.secret, header, req.body)
    assert req.headers["paygate-timestamp"] == header.split(",")[0].removeprefix("t=")
    assert req.headers["content-type"] == "application/json"

    doc = json.loads(req.body)
    event = await _one_event(res)
    assert doc["id"] == req.headers["paygate-event-id"] == str(event.id)
    assert doc["type"] == "enote.issued"
    assert doc["data"]["note_no"] == "0000000001"
    assert doc["data"]["bill_id"] == str(event.bill_id)
    assert set(doc) == {"id", "type", "created_at", "data"}

    tampered = req.body.replace(b"0000000001", b"0000000002")
    assert not wh.verify_signature(agency.secret, header, tampered)
    assert not wh.verify_signature("whsec_wrong", header, req.body)
    ts = int(header.split(",")[0][2:])
    assert not wh.verify_signature(agency.secret, header, req.body, now=ts + 301)
    assert wh.verify_signature(agency.secret, header, req.body, now=ts + 299)
    assert not wh.verify_signature(agency.secret, "v1=" + "0" * 64, req.body)


def test_signature_scheme_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"id":"x"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert wh.sign("s3cret", 1_700_000_000, body) == f"t=1700000000,v1={expected}"
    # Two signatures during a secret rotation: either one verifies.
    both = f"t=1700000000,v1={'0' * 64},v1={expected}"
    assert wh.verify_signature("s3cret", both, body, now=1_700_000_000)


# ------------------------------------------------------------------ query, resend, isolation


async def test_resend_delivers_again_with_the_same_id_and_is_audited(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    await _emit(res, agency.id)
    await _pump(res, deliverer)
    event = await _one_event(res)
    async with res.sessions() as s, s.begin():
        view = await wh.resend(s, agency.id, event.id, Actor(type="agency", id="ops-1"))
    assert view.status == "PENDING"
    assert await deliverer.deliver_due(res.sessions) == 1
    assert receiver.event_ids() == [str(event.id)] * 2
    async with res.sessions() as s:
        audit = (
            await s.scalars(select(AuditEntry).where(AuditEntry.action == "webhook.resend"))
        ).one()
        attempts = await wh.list_attempts(s, agency.id, event.id)
    assert (audit.actor_type, audit.actor_id, audit.object_id) == ("agency", "ops-1", str(event.id))
    assert audit.detail["previous_status"] == "DELIVERED"
    assert [a.attempt_no for a in attempts] == [1, 2]
    assert (await _one_event(res)).status == "DELIVERED"


async def test_resend_while_in_flight_is_a_conflict(
    res: Resources, receiver: Receiver, agency: Hooked
) -> None:
    await _emit(res, agency.id)
    await ingest(res.sessions)
    event = await _one_event(res)
    # A worker holds the lease (claimed, sending): resend must not start a parallel send.
    async with res.sessions() as s, s.begin():
        await s.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event.id)
            .values(lease_until=func.now() + timedelta(minutes=1))
        )
    async with res.sessions() as s, s.begin():
        with pytest.raises(Conflict) as info:
            await wh.resend(s, agency.id, event.id, SYSTEM)
    assert info.value.code == "webhook_in_flight"


async def test_an_agency_never_sees_another_agencys_events(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    other = await _hooked_agency(res, receiver.url, name="考试院")
    await _emit(res, agency.id)
    await _pump(res, deliverer)
    event = await _one_event(res)
    async with res.sessions() as s:
        assert (await wh.list_events(s, other.id)).items == []
        with pytest.raises(NotFound):
            await wh.list_attempts(s, other.id, event.id)
        with pytest.raises(NotFound):
            await wh.get_event(s, other.id, event.id)
    async with res.sessions() as s, s.begin():
        with pytest.raises(NotFound):
            await wh.resend(s, other.id, event.id, SYSTEM)
    async with res.sessions() as s:
        assert (
            await s.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.action == "webhook.resend")
            )
            == 0
        )


async def test_list_events_filters_and_pages(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    for _ in range(5):
        await _emit(res, agency.id, event="bill.paid")
    for _ in range(2):
        await _emit(res, agency.id, event="bill.refunded")
    await ingest(res.sessions)
    async with res.sessions() as s:
        seen: list[uuid.UUID] = []
        cursor: str | None = None
        while True:
            page = await wh.list_events(s, agency.id, wh.EventFilter(limit=3), cursor)
            seen += [e.id for e in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        all_ids = [e.id for e in sorted(await _events(res), key=lambda e: (e.created_at, e.id))]
        assert seen == list(reversed(all_ids))  # newest first, nothing twice, nothing lost
        refunded = await wh.list_events(s, agency.id, wh.EventFilter(type="bill.refunded"))
        assert [e.type for e in refunded.items] == ["bill.refunded"] * 2
        delivered = await wh.list_events(s, agency.id, wh.EventFilter(status="DELIVERED"))
        assert delivered.items == []
        with pytest.raises(InvalidInput):
            await wh.list_events(s, agency.id, wh.EventFilter(type="bill.exploded"))
        with pytest.raises(InvalidInput):
            await wh.list_events(s, agency.id, wh.EventFilter(limit=0))
        with pytest.raises(InvalidInput):
            await wh.list_events(s, agency.id, None, cursor="not-a-cursor")


# ------------------------------------------------------------------ bad input, poison, worker


async def test_emit_rejects_unknown_events_and_writes_nothing(
    res: Resources, agency: Hooked
) -> None:
    async with res.sessions() as s:
        with pytest.raises(InvalidInput) as info:
            await wh.emit(
                s,
                agency_id=agency.id,
                event="bill.exploded",
                bill_id=None,
                data={},
                dedupe_key="k1",
            )
        assert info.value.code == "unknown_webhook_event"
        with pytest.raises(InvalidInput):
            await wh.emit(
                s,
                agency_id=agency.id,
                event="bill.paid",
                bill_id=None,
                data={"amount": float("nan")},
                dedupe_key="k2",
            )
        assert await s.scalar(select(func.count()).select_from(OutboxMessage)) == 0


async def test_poison_outbox_message_is_set_aside_with_its_reason(
    res: Resources, agency: Hooked
) -> None:
    async with res.sessions() as s, s.begin():
        await outbox.enqueue(
            s,
            wh.TOPIC,
            "poison-1",
            {"event": "bill.paid", "agency_id": str(uuid.uuid4()), "bill_id": None, "data": {}},
        )
        await outbox.enqueue(
            s, wh.TOPIC, "poison-2", {"event": "nope", "agency_id": str(agency.id), "data": {}}
        )
    await _emit(res, agency.id)  # a good one in the same batch still goes through
    assert await ingest(res.sessions) == 3
    assert len(await _events(res)) == 1
    async with res.sessions() as s:
        rows = (await s.scalars(select(OutboxMessage).order_by(OutboxMessage.key))).all()
    reasons = {m.key: m.last_error for m in rows}
    assert all(m.processed_at is not None for m in rows)
    assert (reasons["poison-1"] or "").startswith("unknown agency")
    assert (reasons["poison-2"] or "").startswith("unknown event")


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "0.0.0.0",
    ],
)
async def test_private_and_loopback_addresses_are_refused(host: str) -> None:
    with pytest.raises(httpcore.ConnectError, match="address_not_allowed"):
        await vetted_addresses(host, 443, allow_private=False)
    assert await vetted_addresses("8.8.8.8", 443, allow_private=False) == ["8.8.8.8"]
    # Development: allowed, and every address is offered (localhost may be ::1 and 127.0.0.1).
    assert "127.0.0.1" in await vetted_addresses("localhost", 80, allow_private=True)


async def test_endpoint_on_our_own_network_gets_nothing_and_is_retried(
    res: Resources, receiver: Receiver, agency: Hooked
) -> None:
    # An agency pointing its webhook at our loopback (PostgreSQL, Redis, metadata...).
    await _emit(res, agency.id)
    async with Deliverer(timeout_ms=3000) as production:
        assert await _pump(res, production) == 1
    assert receiver.received() == []
    event = await _one_event(res)
    assert (event.status, event.failures) == ("PENDING", 1)
    async with res.sessions() as s:
        (attempt,) = await wh.list_attempts(s, agency.id, event.id)
    assert attempt.status_code is None
    assert attempt.error is not None
    assert "address_not_allowed" in attempt.error


async def test_worker_default_jobs_ingest_and_deliver(
    res: Resources, receiver: Receiver, agency: Hooked
) -> None:
    jobs = [j for j in default_jobs() if j.name.startswith("webhooks.")]
    assert [j.name for j in jobs] == ["webhooks.ingest", "webhooks.deliver"]
    await _emit(res, agency.id, event="bill.expired")
    try:
        handled = await run_once(res, jobs)
    finally:
        await close_jobs(jobs)
    assert handled == {"webhooks.ingest": 1, "webhooks.deliver": 1}
    assert receiver.event_ids() == [str((await _one_event(res)).id)]


async def test_cli_lists_attempts_and_resends(
    res: Resources, receiver: Receiver, agency: Hooked, deliverer: Deliverer
) -> None:
    await _emit(res, agency.id)
    await _pump(res, deliverer)
    event = await _one_event(res)

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "webhooks",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    listed = json.loads(await cli("list", "--agency", str(agency.id)))
    assert [e["id"] for e in listed["items"]] == [str(event.id)]
    attempts = json.loads(
        await cli("attempts", "--agency", str(agency.id), "--event", str(event.id))
    )
    assert [a["status_code"] for a in attempts] == [200]
    resent = json.loads(
        await cli("resend", "--agency", str(agency.id), "--event", str(event.id), "--actor", "op")
    )
    assert resent["status"] == "PENDING"
    assert await deliverer.deliver_due(res.sessions) == 1
    assert receiver.event_ids() == [str(event.id)] * 2
