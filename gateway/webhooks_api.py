"""Agency webhook API (/v1/webhooks): set the endpoint, list events and attempts, resend.

Thin controllers over billing.webhooks; an agency only ever sees its own events (another
agency's event is a 404). Setting the endpoint and resending are audited by the service.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery
from sqlalchemy.ext.asyncio import AsyncSession

from billing import webhooks as wh
from gateway.auth import AgencyPrincipal, provide_principal
from gateway.bills_api import decode_body, local_time
from gateway.state import Resources


class EndpointIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=8, max_length=2000)]


class EndpointOut(msgspec.Struct):
    url: str
    secret: str
    """Shown once: sign-verification secret for `Paygate-Signature`. Setting the endpoint
    again issues a new one."""


class WebhooksController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]  # noqa: RUF012
    dependencies = {"principal": Provide(provide_principal)}  # noqa: RUF012

    @put("/endpoint", summary="Set the webhook URL; returns a new signing secret once")
    async def set_endpoint(
        self,
        request: Request[Any, Any, Any],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
    ) -> EndpointOut:
        data = decode_body(await request.body(), EndpointIn)
        secret = await wh.set_endpoint(
            db,
            principal.agency_id,
            data.url,
            principal.actor,
            allow_private=resources.settings.webhooks.allow_private,
        )
        await db.commit()
        return EndpointOut(url=data.url, secret=secret)

    @get("/events", summary="This agency's webhook events, newest first (cursor paging)")
    async def list_events(
        self,
        *,
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
        type: FromQuery[str | None] = None,  # noqa: A002 - the public parameter name
        status: FromQuery[str | None] = None,
        bill_id: FromQuery[uuid.UUID | None] = None,
        created_from: FromQuery[datetime | None] = None,
        created_to: FromQuery[datetime | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
    ) -> wh.EventPage:
        filters = wh.EventFilter(
            type=type,
            status=status,
            bill_id=bill_id,
            created_from=local_time(created_from),
            created_to=local_time(created_to),
            limit=limit,
        )
        return await wh.list_events(db, principal.agency_id, filters, cursor)

    @get("/events/{event_id:uuid}", summary="One webhook event")
    async def get_event(
        self,
        event_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
    ) -> wh.EventView:
        return await wh.get_event(db, principal.agency_id, event_id)

    @get("/events/{event_id:uuid}/attempts", summary="Delivery attempts of one event")
    async def attempts(
        self,
        event_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
    ) -> list[wh.AttemptView]:
        return await wh.list_attempts(db, principal.agency_id, event_id)

    @post("/events/{event_id:uuid}/resend", summary="Deliver an event again", status_code=202)
    async def resend(
        self,
        event_id: FromPath[uuid.UUID],
        principal: NamedDependency[AgencyPrincipal],
        db: NamedDependency[AsyncSession],
    ) -> wh.EventView:
        view = await wh.resend(db, principal.agency_id, event_id, principal.actor)
        await db.commit()
        return view
