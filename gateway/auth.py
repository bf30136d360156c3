"""Agency request signing: `Authorization: PAYGATE-HMAC-SHA256 key=…, ts=…, nonce=…, sig=…`.

The signature is lower-case hex HMAC-SHA256, keyed with the API secret (UTF-8), over the
canonical string — six lines joined with "\\n", no trailing newline:

    PAYGATE-HMAC-SHA256
    <METHOD upper-case>
    <path exactly as sent, without the query>
    <query: pairs percent-encoded (RFC 3986), sorted by key then value, joined by "&">
    <ts: Unix seconds, the same as in the header>
    <nonce: 16–64 chars of [A-Za-z0-9_-], fresh per request>
    <lower-case hex SHA-256 of the raw body (of b"" when there is none)>

Checks, cheapest first and all before anything is written: header shape, clock skew
(±300 s by default), key live and agency active, constant-time signature compare — and
only then the nonce is recorded, scoped by the key id, in the one nonce store
(`kernel.nonces`: Redis, PostgreSQL while Redis is down; the key lookup also consults the
table in its one query). A nonce seen before is a replay. Every failure is a 401 with its
own code.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

import structlog
from litestar import Request
from litestar.di import NamedDependency

from billing.agencies import find_live_key, key_use_due, touch_key
from gateway.state import Resources
from kernel import nonces
from kernel.audit import Actor
from kernel.errors import Unauthorized

__all__ = [
    "AgencyPrincipal",
    "authorization_header",
    "provide_principal",
    "verify",
]

log = structlog.get_logger(__name__)

SCHEME = "PAYGATE-HMAC-SHA256"
_PARAM = re.compile(r"\s*([a-z]+)\s*=\s*([^,\s]+)\s*")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


@dataclass(frozen=True, slots=True)
class AgencyPrincipal:
    agency_id: uuid.UUID
    key_id: str

    @property
    def actor(self) -> Actor:
        """Who the audit log names for this request: the agency's key."""
        return Actor("agency", self.key_id)


def canonical_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(pairs))


def canonical_string(
    *, method: str, path: str, query: str, ts: str, nonce: str, body: bytes
) -> str:
    return "\n".join(
        (
            SCHEME,
            method.upper(),
            path,
            canonical_query(query),
            ts,
            nonce,
            hashlib.sha256(body).hexdigest(),
        )
    )


def sign(
    secret: str, *, method: str, path: str, query: str, ts: str, nonce: str, body: bytes
) -> str:
    message = canonical_string(method=method, path=path, query=query, ts=ts, nonce=nonce, body=body)
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def authorization_header(
    key_id: str,
    secret: str,
    *,
    method: str,
    path: str,
    query: str,
    body: bytes,
    ts: int | None = None,
    nonce: str | None = None,
) -> str:
    """Build the header a client sends (used by tests, the bench and the demo docs)."""
    import secrets as _secrets

    ts_s = str(int(time.time()) if ts is None else ts)
    nonce = nonce or _secrets.token_urlsafe(18)
    sig = sign(secret, method=method, path=path, query=query, ts=ts_s, nonce=nonce, body=body)
    return f"{SCHEME} key={key_id}, ts={ts_s}, nonce={nonce}, sig={sig}"


def _parse(header: str) -> dict[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    if scheme != SCHEME:
        raise Unauthorized(f"Use the {SCHEME} scheme.", code="auth_scheme")
    params: dict[str, str] = {}
    for part in rest.split(","):
        m = _PARAM.fullmatch(part)
        if m is None:
            raise Unauthorized("Malformed Authorization header.", code="auth_malformed")
        params[m.group(1)] = m.group(2)
    if set(params) != {"key", "ts", "nonce", "sig"}:
        raise Unauthorized("Authorization needs key, ts, nonce and sig.", code="auth_malformed")
    if not (_KEY_ID.match(params["key"]) and _NONCE.match(params["nonce"])):
        raise Unauthorized("Malformed key id or nonce.", code="auth_malformed")
    if not params["ts"].isdigit():
        raise Unauthorized("ts is Unix seconds.", code="auth_malformed")
    return params


async def verify(
    resources: Resources,
    *,
    method: str,
    path: str,
    query: str,
    authorization: str | None,
    body: bytes,
    now: float | None = None,
) -> AgencyPrincipal:
    if not authorization:
        raise Unauthorized("Sign the request (Authorization header).", code="auth_missing")
    p = _parse(authorization)
    cfg = resources.settings.billing
    now = time.time() if now is None else now
    if abs(now - int(p["ts"])) > cfg.clock_skew_s:
        raise Unauthorized("Timestamp outside the allowed clock skew.", code="auth_stale")
    async with resources.sessions() as session:
        key = await find_live_key(session, p["key"], p["nonce"])
    if key is None:
        raise Unauthorized("Unknown or revoked key.", code="auth_key")
    expected = sign(
        key.secret, method=method, path=path, query=query, ts=p["ts"], nonce=p["nonce"], body=body
    )
    if not hmac.compare_digest(expected, p["sig"].lower()):
        raise Unauthorized("Signature does not match.", code="auth_signature")
    if key.nonce_seen or not await nonces.first_use(
        resources.redis, resources.sessions, key.key_id, p["nonce"], cfg.nonce_ttl_s
    ):
        raise Unauthorized("Nonce already used.", code="auth_replay")
    used_at = datetime.now(UTC)
    if key_use_due(key, used_at):  # authenticated use, recorded once a minute at most
        async with resources.sessions() as session, session.begin():
            await touch_key(session, key, used_at)
    structlog.contextvars.bind_contextvars(agency_id=str(key.agency_id), key_id=key.key_id)
    return AgencyPrincipal(key.agency_id, key.key_id)


async def provide_principal(
    request: Request[Any, Any, Any], resources: NamedDependency[Resources]
) -> AgencyPrincipal:
    """Litestar dependency: the authenticated agency of this request."""
    return await verify(
        resources,
        method=request.method,
        path=request.scope["path"],
        query=request.scope.get("query_string", b"").decode("latin-1"),
        authorization=request.headers.get("authorization"),
        body=await request.body(),
    )
