"""Staff authentication for the finance endpoints: `Authorization: Bearer <token>`.

Tokens are looked up by SHA-256 (kernel.staff). `requires_role(...)` is a Litestar guard;
ADMIN passes every role check, AUDITOR is read-only everywhere (GET/HEAD only), whatever
roles an endpoint admits. The authenticated principal is left in `request.state.staff`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.state import Resources
from kernel import staff
from kernel.errors import Forbidden, Unauthorized

log = structlog.get_logger(__name__)

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]

READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class StaffPrincipal:
    id: str
    name: str
    role: str


def requires_role(*roles: staff.StaffRole) -> Guard:
    allowed = {str(r) for r in roles} | {str(staff.StaffRole.ADMIN)}

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a staff bearer token is required", code="token_required")
        resources: Resources = connection.app.state["resources"]
        async with resources.sessions() as session:
            user = await staff.authenticate(session, token.strip())
        method = connection.scope.get("method", "GET")
        if user.role == staff.StaffRole.AUDITOR and method not in READ_METHODS:
            raise Forbidden("auditors have read-only access", code="read_only_role")
        if user.role not in allowed:
            raise Forbidden(f"requires one of {sorted(allowed)}", code="role_required")
        connection.state["staff"] = StaffPrincipal(str(user.id), user.name, user.role)
        structlog.contextvars.bind_contextvars(staff=user.name)

    return guard


def principal(connection: ASGIConnection[Any, Any, Any, Any]) -> StaffPrincipal:
    found = connection.state.get("staff")
    if not isinstance(found, StaffPrincipal):
        raise Unauthorized("not authenticated", code="token_required")
    return found
