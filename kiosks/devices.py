"""The kiosk registry: register, disable, rotate the key, list; heartbeats and offline.

An HMAC device's secret is generated here, shown once to whoever registers or rotates it,
and kept encrypted at rest (kernel.crypto, bound to the device id so a secret copied onto
another row does not decrypt). An SM2 device's private key never leaves the device: we keep
its public key.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from billing.models import Agency
from channels.kiosk.inbound import DeviceEntry
from channels.kiosk.transforms import DEVICE_ID, DeviceKey, sm2_public_key
from kernel import audit, crypto
from kernel.audit import Actor
from kernel.errors import Conflict, InvalidInput, NotFound
from kiosks.models import SIGN_ALGORITHMS, KioskDevice
from payments.confirm import DriverStatement

__all__ = [
    "DeviceDirectory",
    "DeviceView",
    "Issued",
    "device_key",
    "enabled_count",
    "forget",
    "get_device",
    "list_devices",
    "register",
    "rotate",
    "set_enabled",
    "view",
]

log = structlog.get_logger(__name__)

_MERCHANT = re.compile(r"^[0-9A-Za-z]{15}$")
_TERMINAL = re.compile(r"^[0-9A-Za-z]{8}$")
_REGION = re.compile(r"^\d{6}$")


def _aad(device_id: str) -> bytes:
    return b"kiosk_devices.secret_enc:" + device_id.encode()


@dataclass(frozen=True, slots=True)
class DeviceView:
    id: str
    hall: str
    location: str
    region_code: str
    agency_id: uuid.UUID | None
    owner_hall: str | None
    acquirer_merchant_id: str
    acquirer_terminal_id: str
    sign_alg: str
    key_version: int
    enabled: bool
    heartbeat_window_s: int
    last_heartbeat_at: datetime | None
    last_seq: int
    online: bool
    """A heartbeat within the device's window."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A registration or rotation: the device, and the HMAC secret to load into it (shown
    once, never again; None for SM2 devices)."""

    device: DeviceView
    secret: str | None


def view(d: KioskDevice, now: datetime | None = None) -> DeviceView:
    now = now or datetime.now(UTC)
    online = d.last_heartbeat_at is not None and now - d.last_heartbeat_at <= timedelta(
        seconds=d.heartbeat_window_s
    )
    return DeviceView(
        id=d.id,
        hall=d.hall,
        location=d.location,
        region_code=d.region_code,
        agency_id=d.agency_id,
        owner_hall=d.owner_hall,
        acquirer_merchant_id=d.acquirer_merchant_id,
        acquirer_terminal_id=d.acquirer_terminal_id,
        sign_alg=d.sign_alg,
        key_version=d.key_version,
        enabled=d.enabled,
        heartbeat_window_s=d.heartbeat_window_s,
        last_heartbeat_at=d.last_heartbeat_at,
        last_seq=d.last_seq,
        online=online,
    )


def device_key(d: KioskDevice) -> DeviceKey:
    """How the device signs (the HMAC secret decrypted)."""
    return _key_of(d.id, d.sign_alg, d.secret_enc, d.public_key)


def _key_of(
    device_id: str, sign_alg: str, secret_enc: bytes | None, public_key: str | None
) -> DeviceKey:
    if sign_alg == "HMAC":
        assert secret_enc is not None
        return DeviceKey("HMAC", secret=crypto.decrypt(secret_enc, aad=_aad(device_id)))
    return DeviceKey("SM2", public_pem=public_key)


def _key_material(
    device_id: str, alg: str, public_key: str | None
) -> tuple[bytes | None, str | None, str | None]:
    """(encrypted secret, public key, secret to show) for a new key."""
    if alg not in SIGN_ALGORITHMS:
        raise InvalidInput("sign_alg is HMAC or SM2", code="sign_alg_unknown")
    if alg == "HMAC":
        if public_key:
            raise InvalidInput("an HMAC device takes no public key", code="public_key_unexpected")
        secret = secrets.token_hex(32)
        return crypto.encrypt(secret.encode(), aad=_aad(device_id)), None, secret
    if not public_key:
        raise InvalidInput("an SM2 device needs its public key (PEM)", code="public_key_required")
    try:
        sm2_public_key(public_key)
    except ValueError as exc:
        raise InvalidInput(str(exc), code="public_key_invalid") from exc
    return None, public_key.strip() + "\n", None


async def register(
    session: AsyncSession,
    *,
    device_id: str,
    hall: str,
    region_code: str,
    acquirer_merchant_id: str,
    acquirer_terminal_id: str,
    sign_alg: str = "HMAC",
    public_key: str | None = None,
    location: str = "",
    agency_id: uuid.UUID | None = None,
    owner_hall: str | None = None,
    heartbeat_window_s: int = 300,
    actor: Actor,
) -> Issued:
    if not DEVICE_ID.match(device_id):
        raise InvalidInput(
            "device id: 1-32 letters, digits or '-', starting with a letter or digit",
            code="device_id_invalid",
        )
    if not hall.strip() or len(hall) > 128 or len(location) > 256:
        raise InvalidInput("hall is required (at most 128 characters)", code="hall_invalid")
    if not _REGION.match(region_code):
        raise InvalidInput("region code is 6 digits", code="region_invalid")
    if not _MERCHANT.match(acquirer_merchant_id) or not _TERMINAL.match(acquirer_terminal_id):
        raise InvalidInput(
            "acquirer merchant id is 15 characters, terminal id 8", code="acquirer_ids_invalid"
        )
    if (agency_id is None) == (not owner_hall):
        raise InvalidInput(
            "a device is owned by an agency or by a service hall (exactly one)",
            code="owner_invalid",
        )
    if not 10 <= heartbeat_window_s <= 86_400:
        raise InvalidInput("heartbeat window is 10 s to 1 day", code="window_invalid")
    if agency_id is not None and await session.get(Agency, agency_id) is None:
        raise NotFound(f"no agency {agency_id}", code="agency_not_found")
    if await session.get(KioskDevice, device_id) is not None:
        raise Conflict(f"device {device_id} is registered already", code="device_exists")
    secret_enc, pem, secret = _key_material(device_id, sign_alg, public_key)
    device = KioskDevice(
        id=device_id,
        hall=hall.strip(),
        location=location.strip(),
        region_code=region_code,
        agency_id=agency_id,
        owner_hall=owner_hall.strip() if owner_hall else None,
        acquirer_merchant_id=acquirer_merchant_id,
        acquirer_terminal_id=acquirer_terminal_id,
        sign_alg=sign_alg,
        secret_enc=secret_enc,
        public_key=pem,
        key_version=1,
        enabled=True,
        heartbeat_window_s=heartbeat_window_s,
        last_seq=0,
    )
    session.add(device)
    await session.flush()
    _audit(session, actor, "kiosk.registered", device_id, hall=device.hall, sign_alg=sign_alg)
    log.info("kiosk registered", device_id=device_id, sign_alg=sign_alg)
    return Issued(view(device), secret)


def _audit(
    session: AsyncSession, actor: Actor, action: str, device_id: str, **detail: object
) -> None:
    audit.record(
        session,
        actor_type=actor.type,
        actor_id=actor.id,
        action=action,
        object_type="kiosk",
        object_id=device_id,
        detail=dict(detail),
    )


async def _locked(session: AsyncSession, device_id: str) -> KioskDevice:
    device = await session.scalar(
        select(KioskDevice).where(KioskDevice.id == device_id).with_for_update()
    )
    if device is None:
        raise NotFound(f"no kiosk {device_id}", code="kiosk_not_found")
    return device


async def set_enabled(
    session: AsyncSession, device_id: str, *, enabled: bool, actor: Actor
) -> DeviceView:
    device = await _locked(session, device_id)
    forget(device_id)
    if device.enabled != enabled:
        device.enabled = enabled
        _audit(session, actor, "kiosk.enabled" if enabled else "kiosk.disabled", device_id)
    await session.flush()
    return view(device)


async def rotate(
    session: AsyncSession,
    device_id: str,
    *,
    actor: Actor,
    sign_alg: str | None = None,
    public_key: str | None = None,
) -> Issued:
    """A new key, effective at once: the old one verifies nothing from now on."""
    device = await _locked(session, device_id)
    forget(device_id)
    alg = sign_alg or device.sign_alg
    secret_enc, pem, secret = _key_material(device_id, alg, public_key)
    device.sign_alg, device.secret_enc, device.public_key = alg, secret_enc, pem
    device.key_version += 1
    await session.flush()
    _audit(
        session, actor, "kiosk.key_rotated", device_id, sign_alg=alg, key_version=device.key_version
    )
    log.info("kiosk key rotated", device_id=device_id, key_version=device.key_version)
    return Issued(view(device), secret)


async def list_devices(session: AsyncSession, *, offline_only: bool = False) -> list[DeviceView]:
    now = datetime.now(UTC)
    devices = [
        view(d, now) for d in await session.scalars(select(KioskDevice).order_by(KioskDevice.id))
    ]
    if offline_only:
        return [d for d in devices if d.enabled and not d.online]
    return devices


async def enabled_count(session: AsyncSession) -> int:
    """How many devices can take a payment (a payer's notice names kiosks only if one can)."""
    stmt = select(func.count()).select_from(KioskDevice).where(KioskDevice.enabled)
    return int(await session.scalar(stmt) or 0)


async def get_device(session: AsyncSession, device_id: str) -> DeviceView:
    device = await session.get(KioskDevice, device_id)
    if device is None:
        raise NotFound(f"no kiosk {device_id}", code="kiosk_not_found")
    return view(device)


_KEY = DriverStatement.of(
    "SELECT id, enabled, sign_alg, secret_enc, public_key FROM kiosk_devices WHERE id = :device"
)
"""One read on the driver connection (no BEGIN/ROLLBACK around it)."""


_DIRECTORIES: weakref.WeakSet[DeviceDirectory] = weakref.WeakSet()


def forget(device_id: str) -> None:
    """Drop what this process's directories hold of a device (it was disabled, enabled or
    given a new key here)."""
    for directory in list(_DIRECTORIES):
        directory.forget(device_id)


class DeviceDirectory:
    """The kiosk adapter's view of the registry (channels.kiosk.inbound.Devices): a device's
    key and whether it is enabled, each kept `ttl_s` seconds per process (a kiosk's message
    and our signed answer need it twice; a busy hall sends many).

    How stale it can be: a disable or a rotation made through this process (set_enabled,
    rotate) is seen by its next message; in other processes within `ttl_s`. A disabled
    device's confirmations and uploads are refused at once everywhere all the same: the
    statement that records them checks `enabled` (kiosks.kiosk)."""

    def __init__(self, engine: AsyncEngine, ttl_s: float = 5.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, DeviceEntry]] = {}
        self._uncached: dict[str, float] = {}
        """Devices changed here lately: read afresh, not cached, for `ttl_s` — a message
        read between the change and its commit must not cache the old key."""
        _DIRECTORIES.add(self)

    def forget(self, device_id: str) -> None:
        self._cache.pop(device_id, None)
        if self._ttl > 0:
            self._uncached[device_id] = time.monotonic() + self._ttl

    async def get(self, device_id: str) -> DeviceEntry | None:
        now = time.monotonic()
        hit = self._cache.get(device_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            rows = await _KEY.fetch(driver, {"device": device_id})
        if not rows:
            self._cache.pop(device_id, None)
            return None
        r = rows[0]
        key = _key_of(r["id"], r["sign_alg"], r["secret_enc"], r["public_key"])
        entry = DeviceEntry(r["id"], key, r["enabled"])
        if self._uncached and self._uncached.get(device_id, now) > now:
            return entry
        self._uncached.pop(device_id, None)
        if self._ttl > 0:
            if len(self._cache) > 10_000:  # bounded: drop what has expired
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[device_id] = (now + self._ttl, entry)
        return entry
