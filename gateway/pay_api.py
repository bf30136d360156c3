"""Citizen API: look a bill up by payment code, start a payment attempt, poll it."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import structlog
from litestar import Controller, MediaType, Request, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response.base import ASGIResponse

from billing import payer as bills
from billing.payment_code import validate
from gateway.limits import request_client
from gateway.state import Resources
from kernel.clock import day_bounds, shanghai_today
from kernel.errors import InvalidInput, NotFound
from payments import attempts

log = structlog.get_logger(__name__)


class ItemOut(msgspec.Struct):
    item_code: str
    name: str
    quantity: int
    unit_amount: int
    amount: int


class BillSummary(msgspec.Struct):
    payment_code: str
    agency_name: str
    payer_name: str
    """Masked."""
    status: str
    payable: bool
    principal: int
    late_fee: int
    overdue_days: int
    amount_due: int
    """Fen, for today (Asia/Shanghai), late fee included."""
    due_date: date
    expires_at: datetime
    items: list[ItemOut]
    refusal_code: str | None = None


class AttemptIn(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    mode: str = "default"
    return_url: str | None = None


class AttemptOut(msgspec.Struct):
    attempt_id: uuid.UUID
    channel: str
    mode: str
    status: str
    amount: int
    expires_at: datetime
    bill_status: str | None
    qr_content: str | None = None
    redirect_url: str | None = None
    instructions: str | None = None
    failure_code: str | None = None


def _attempt_out(view: attempts.AttemptView) -> AttemptOut:
    payload: dict[str, Any] = view.client_payload
    return AttemptOut(
        attempt_id=view.id,
        channel=view.channel,
        mode=view.mode,
        status=view.status,
        amount=view.amount,
        expires_at=view.expires_at,
        bill_status=view.bill_status,
        qr_content=payload.get("qr_content"),
        redirect_url=payload.get("redirect_url"),
        instructions=payload.get("instructions"),
        failure_code=view.failure_code,
    )


async def rate_limit(
    resources: Resources,
    request: Request[Any, Any, Any],
    bucket: str,
    limit: int,
    *,
    also_get: str | None = None,
) -> bytes | None:
    """Fixed window per client (gateway.limits: trusted proxies only; Redis, else this
    process's memory). `also_get` fetches a cache key in the same round trip (the
    summary's hot path)."""
    who = request_client(request, resources.settings.server.trusted_proxies)
    window = resources.settings.payments.lookup_rate_window_s
    return await resources.limiter.hit(bucket, who, limit, window, also_get=also_get)


async def _summary_of(
    resources: Resources, request: Request[Any, Any, Any], payment_code: str
) -> _Rendered:
    """The summary and its JSON body: memoised when the view came from Redis."""
    pay = resources.settings.payments
    cached = await rate_limit(
        resources,
        request,
        "lookup",
        pay.lookup_rate_limit,
        also_get=bills.cache_key(payment_code),
    )
    now = datetime.now(UTC)
    if cached is not None:  # only a real bill's code is cached: its check digit is valid
        hit = _RENDERED.get(cached)
        if hit is not None and now < hit.until:
            return hit
        view: bills.BillView | None = bills.decode_cached(cached)
    else:
        validate(payment_code)  # a mistyped code is a 422 before any database lookup
        async with resources.sessions() as session:
            view = await bills.load_and_cache(
                resources.redis, session, payment_code, pay.summary_cache_ttl_s
            )
    if view is None:
        raise NotFound("No bill has this payment code.", code="bill_not_found")
    due = bills.due_shown(view, shanghai_today(now), resources.day_count)
    refused = bills.refusal(view, now)
    summary = BillSummary(
        payment_code=view.payment_code,
        agency_name=view.agency_name,
        payer_name=bills.mask_name(view.payer_name),
        status=view.status,
        payable=refused is None,
        principal=due.principal,
        late_fee=due.late_fee,
        overdue_days=due.overdue_days,
        amount_due=due.total,
        due_date=view.due_date,
        expires_at=view.expires_at,
        items=[
            ItemOut(
                item_code=li.item_code,
                name=li.name,
                quantity=li.quantity,
                unit_amount=li.unit_amount,
                amount=li.amount,
            )
            for li in view.lines
        ],
        refusal_code=refused[0] if refused else None,
    )
    return _render(summary, view.agency_id, cached, now)


class _Rendered(NamedTuple):
    summary: BillSummary
    body: bytes
    until: datetime
    """The summary changes at the next Shanghai midnight (late fee) and at the expiry
    (deadline categories); any other change is a new cached view, i.e. a new key."""
    agency_id: uuid.UUID
    """Not on the wire: which agency's counter (card terminals) the bill can be paid at."""


# A summary is a pure function of the cached view's bytes and the time, so it is memoised
# per process by those exact bytes: a state change writes new bytes (or drops the key) in
# Redis, and the old entry is simply never looked up again. Bounded; oldest out first.
_RENDERED: dict[bytes, _Rendered] = {}
_RENDERED_MAX = 4096
_SUMMARY_JSON = msgspec.json.Encoder()


def _render(
    summary: BillSummary, agency_id: uuid.UUID, cached: bytes | None, now: datetime
) -> _Rendered:
    _, midnight = day_bounds(shanghai_today(now))  # the late fee steps at Shanghai midnight
    until = min(midnight, summary.expires_at) if now < summary.expires_at else midnight
    rendered = _Rendered(summary, _SUMMARY_JSON.encode(summary), until, agency_id)
    if cached is not None:
        if len(_RENDERED) >= _RENDERED_MAX:
            del _RENDERED[next(iter(_RENDERED))]
        _RENDERED[cached] = rendered
    return rendered


async def bill_summary(
    resources: Resources, request: Request[Any, Any, Any], payment_code: str
) -> BillSummary:
    """The payer's view of a bill (rate-limited, check digit before any database lookup,
    cached); shared by the citizen API and the cashier page."""
    return (await _summary_of(resources, request, payment_code)).summary


async def bill_summary_and_agency(
    resources: Resources, request: Request[Any, Any, Any], payment_code: str
) -> tuple[BillSummary, uuid.UUID]:
    """`bill_summary` and the bill's agency (for the cashier page's ways to pay)."""
    rendered = await _summary_of(resources, request, payment_code)
    return rendered.summary, rendered.agency_id


async def bill_summary_json(
    resources: Resources, request: Request[Any, Any, Any], payment_code: str
) -> bytes:
    """`bill_summary` as the API's JSON body, encoded once per cached view and day."""
    return (await _summary_of(resources, request, payment_code)).body


_UNSAFE_IN_URL = re.compile(r"[\x00-\x20\\\x7f]")
"""Whitespace, control characters and backslashes: browsers read `\\` as `/`, so
`https://evil.example\\@our.host/` would parse as our host here and go to evil there."""


def checked_return_url(url: str, allowed_hosts: frozenset[str]) -> str:
    """The page a payment may send the browser back to: http(s) on one of our hosts only,
    or the payment would end on a phishing page dressed as ours (an open redirect)."""
    refused = InvalidInput(
        "return_url must be an http(s) URL on one of the service's registered hosts.",
        code="return_url_not_allowed",
    )
    if len(url) > 2048 or _UNSAFE_IN_URL.search(url):
        raise refused
    try:
        parts = urlsplit(url)
        _ = parts.port  # a malformed port raises here
    except ValueError:
        raise refused from None
    if (
        parts.scheme.lower() not in {"http", "https"}
        or parts.username is not None
        or (parts.hostname or "").lower() not in allowed_hosts
    ):
        raise refused
    return url


async def start_attempt(  # noqa: PLR0917 - the request's parts, as both callers have them
    resources: Resources,
    request: Request[Any, Any, Any],
    payment_code: str,
    channel: str,
    mode: str,
    return_url: str | None,
) -> attempts.AttemptView:
    """Start paying a bill (rate-limited, check digit first); shared by the citizen API
    and the cashier page."""
    await rate_limit(resources, request, "attempt", resources.settings.payments.lookup_rate_limit)
    validate(payment_code)
    if return_url is not None:
        checked_return_url(return_url, resources.settings.server.return_url_hosts)
    return await attempts.create_attempt(
        resources.payment_context(),
        payment_code=payment_code,
        channel=channel,
        mode=mode,
        return_url=return_url,
    )


class PayController(Controller):
    path = "/v1"
    tags = ["citizen"]  # noqa: RUF012

    @get(
        "/pay/{payment_code:str}",
        summary="Bill summary for the payer",
        cache=False,
        # The body is encoded ahead (see _render); the schema is still BillSummary's.
        responses={200: ResponseSpec(data_container=BillSummary, description="The bill")},
    )
    async def summary(
        self,
        payment_code: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> ASGIResponse:
        # The low-level response: the body is final bytes, no Response conversion needed.
        body = await bill_summary_json(resources, request, payment_code)
        return ASGIResponse(body=body, media_type=MediaType.JSON)

    @post("/pay/{payment_code:str}/attempts", summary="Start paying through a channel")
    async def create(
        self,
        payment_code: FromPath[str],
        data: JSONBody[AttemptIn],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> AttemptOut:
        view = await start_attempt(
            resources, request, payment_code, data.channel, data.mode, data.return_url
        )
        return _attempt_out(view)

    @get("/attempts/{attempt_id:uuid}", summary="Poll a payment attempt", cache=False)
    async def attempt(
        self, attempt_id: FromPath[uuid.UUID], resources: NamedDependency[Resources]
    ) -> AttemptOut:
        return _attempt_out(await attempts.get_attempt(resources.payment_context(), attempt_id))
