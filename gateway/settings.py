"""Settings read from the environment into small typed, frozen dataclasses.

Every knob has a default that suits a laptop; production sets the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from urllib.parse import urlsplit

from channels.alipay.config import AlipayConfig
from gateway.limits import parse_networks
from kernel.crypto import KeyConfigError, KeySettings

__all__ = [
    "BankSettings",
    "BillingSettings",
    "DatabaseSettings",
    "EnoteSettings",
    "LogSettings",
    "PaymentSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "SettlementSettings",
    "WebhookSettings",
]


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = _env(name)
    return float(raw) if raw else default


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name).lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str | None
    """`DATABASE_URL`; None starts the embedded PostgreSQL."""
    embedded_dir: Path
    pool_size: int
    """Kept-open connections per process: at least the concurrent requests a process serves
    (the bench drives 32). Past pool_size a returned connection is closed, and its successor
    connects, registers codecs and re-prepares every statement (asyncpg's cache is per
    connection): at 20 + 10 overflow, 32 clients made confirmations 1.6x slower than 4."""
    max_overflow: int
    confirm_concurrency: int
    """Payment confirmations in the database at once per process; the rest wait their turn
    in Python. Measured with 32 concurrent bank confirmations on 2 cores, two rounds: with no
    limit PostgreSQL spent 583-740 µs of CPU per confirmation (backends contending on WAL and
    buffer locks) for 1,056 and 1,292 confirmations/s; limited to 6, 397-433 µs for 1,512
    and 1,706/s."""
    echo: bool

    @classmethod
    def from_env(cls) -> DatabaseSettings:
        return cls(
            url=_env("DATABASE_URL") or None,
            embedded_dir=Path(_env("PAYGATE_PG_DIR", "var/pg")),
            pool_size=_env_int("PAYGATE_DB_POOL_SIZE", 40),
            max_overflow=_env_int("PAYGATE_DB_MAX_OVERFLOW", 8),
            confirm_concurrency=_env_int(
                "PAYGATE_DB_CONFIRM_CONCURRENCY", 2 * (os.cpu_count() or 1) + 2
            ),
            echo=_env_bool("PAYGATE_DB_ECHO", False),
        )


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str | None
    """`REDIS_URL`; None starts the embedded Redis."""
    embedded_dir: Path
    timeout_s: float = 0.5
    """Per command and per connect. Redis answers in well under a millisecond; one that
    takes longer is sick, and every caller can do without it (kernel.kv's breaker)."""
    breaker_s: float = 5.0
    """After a timeout or a failed connect, Redis is bypassed this long between probes."""

    @classmethod
    def from_env(cls) -> RedisSettings:
        return cls(
            url=_env("REDIS_URL") or None,
            embedded_dir=Path(_env("PAYGATE_REDIS_DIR", "var/redis")),
            timeout_s=_env_float("PAYGATE_REDIS_TIMEOUT_S", 0.5),
            breaker_s=_env_float("PAYGATE_REDIS_BREAKER_S", 5.0),
        )


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    workers: int
    public_url: str
    """Base URL citizens and channels reach us at (QR codes, notify URLs)."""
    trusted_proxies: tuple[str, ...] = ()
    """`PAYGATE_TRUSTED_PROXIES`: our own proxies/balancers (CIDRs). Only a request from one
    of them has its `X-Forwarded-For` read; see gateway.limits."""
    return_url_hosts: frozenset[str] = frozenset()
    """`PAYGATE_RETURN_URL_HOSTS`: hosts a payment may return the browser to (the public
    URL's host is always one)."""

    @classmethod
    def from_env(cls) -> ServerSettings:
        host = _env("PAYGATE_HOST", "127.0.0.1")
        port = _env_int("PAYGATE_PORT", 8000)
        public_url = _env("PAYGATE_PUBLIC_URL", f"http://{host}:{port}").rstrip("/")
        hosts = {h.strip().lower() for h in _env("PAYGATE_RETURN_URL_HOSTS").split(",")}
        hosts.add((urlsplit(public_url).hostname or "").lower())
        return cls(
            host=host,
            port=port,
            workers=_env_int("PAYGATE_WORKERS", 1),
            public_url=public_url,
            trusted_proxies=tuple(map(str, parse_networks(_env("PAYGATE_TRUSTED_PROXIES")))),
            return_url_hosts=frozenset(hosts - {""}),
        )


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str
    json: bool | None
    """None: JSON unless stderr is a terminal."""

    @classmethod
    def from_env(cls) -> LogSettings:
        fmt = _env("PAYGATE_LOG_FORMAT").lower()
        return cls(
            level=_env("PAYGATE_LOG_LEVEL", "INFO").upper(),
            json=None if not fmt else fmt == "json",
        )


def _fee_rates(raw: str) -> dict[str, int]:
    """`alipay:60,bank:0` → {"alipay": 60, "bank": 0} (basis points of the amount)."""
    rates: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, bp = part.partition(":")
        rates[name.strip()] = int(bp)
    return rates


@dataclass(frozen=True, slots=True)
class SettlementSettings:
    cutoff: time
    """`PAYGATE_DAY_CUTOFF` (HH:MM, Asia/Shanghai): payments at or after it belong to the
    next business day (日切). Local practice; default midnight."""
    hold_days: int
    """`PAYGATE_RECON_HOLD_DAYS`: platform-only records wait this long for a late file."""
    fee_rates_bp: dict[str, int] = field(hash=False)  # settings are hashed as cache keys
    """`PAYGATE_FEE_RATES` (e.g. `alipay:60`): expected fee per channel in basis points;
    a channel not listed is not fee-checked."""
    reconcile_at: time = time(9, 30)
    """`PAYGATE_RECONCILE_AT` (HH:MM, Asia/Shanghai): from this time on, the worker
    reconciles every channel with a statement for the previous business day (channels
    publish their files in the early morning)."""
    reconcile_retry_s: int = 900
    """`PAYGATE_RECONCILE_RETRY_S`: wait after a failed daily run (the channel down, no file
    yet); doubled after each further failure, at most 4 hours."""
    reconcile_tries: int = 8
    """`PAYGATE_RECONCILE_TRIES`: daily runs of a channel at most, failed ones counted,
    before it is left to a person (`paygate reconcile`)."""

    @classmethod
    def from_env(cls) -> SettlementSettings:
        return cls(
            cutoff=time.fromisoformat(_env("PAYGATE_DAY_CUTOFF", "00:00")),
            hold_days=_env_int("PAYGATE_RECON_HOLD_DAYS", 3),
            fee_rates_bp=_fee_rates(_env("PAYGATE_FEE_RATES")),
            reconcile_at=time.fromisoformat(_env("PAYGATE_RECONCILE_AT", "09:30")),
            reconcile_retry_s=_env_int("PAYGATE_RECONCILE_RETRY_S", 900),
            reconcile_tries=_env_int("PAYGATE_RECONCILE_TRIES", 8),
        )


@dataclass(frozen=True, slots=True)
class BillingSettings:
    serial_key: bytes = field(repr=False)
    """Key of the payment-code serial permutation (`PAYGATE_SERIAL_KEY`, base64)."""
    clock_skew_s: int
    nonce_ttl_s: int
    late_fee_grace_days: int
    """Overdue days not charged after the due date (local practice; national rule: 0)."""

    @classmethod
    def from_env(cls) -> BillingSettings:
        from billing.serials import load_serial_key

        return cls(
            serial_key=load_serial_key(),
            clock_skew_s=_env_int("PAYGATE_AUTH_CLOCK_SKEW_S", 300),
            nonce_ttl_s=_env_int("PAYGATE_AUTH_NONCE_TTL_S", 600),
            late_fee_grace_days=_env_int("PAYGATE_LATE_FEE_GRACE_DAYS", 0),
        )


def alipay_from_env() -> AlipayConfig:
    """`PAYGATE_ALIPAY_*`: the channel is off unless an app id is set."""
    priv = _env("PAYGATE_ALIPAY_APP_PRIVATE_KEY_PATH")
    pub = _env("PAYGATE_ALIPAY_PUBLIC_KEY_PATH")
    return AlipayConfig(
        app_id=_env("PAYGATE_ALIPAY_APP_ID"),
        gateway_url=_env("PAYGATE_ALIPAY_GATEWAY_URL", "https://openapi.alipay.com/gateway.do"),
        app_private_key_path=Path(priv) if priv else None,
        app_private_key_pem=_env("PAYGATE_ALIPAY_APP_PRIVATE_KEY_PEM"),
        alipay_public_key_path=Path(pub) if pub else None,
        alipay_public_key_pem=_env("PAYGATE_ALIPAY_PUBLIC_KEY_PEM"),
        notify_base_url=_env("PAYGATE_ALIPAY_NOTIFY_BASE_URL").rstrip("/"),
        pool_size=_env_int("PAYGATE_ALIPAY_POOL_SIZE", 8),
        timeout_s=_env_float("PAYGATE_ALIPAY_TIMEOUT", 10.0),
        sign_type=_env("PAYGATE_ALIPAY_SIGN_TYPE", "RSA2"),
    )


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    timeout_ms: int
    """Whole-request deadline for one delivery (connect + send + response)."""
    max_connections: int
    """Connection pool bound of the worker's one HTTP client."""
    batch_size: int
    """Events claimed per delivery round; they are sent concurrently."""
    allow_private: bool = False
    """Deliver to loopback/private addresses too: development and the demo only."""

    @classmethod
    def from_env(cls) -> WebhookSettings:
        return cls(
            timeout_ms=_env_int("PAYGATE_WEBHOOK_TIMEOUT_MS", 10_000),
            max_connections=_env_int("PAYGATE_WEBHOOK_MAX_CONNECTIONS", 20),
            batch_size=_env_int("PAYGATE_WEBHOOK_BATCH", 50),
            allow_private=_env_bool("PAYGATE_WEBHOOK_ALLOW_PRIVATE", default=False),
        )


@dataclass(frozen=True, slots=True)
class EnoteSettings:
    """Fiscal e-notes: signing keys, certificate serials and the note-code parts."""

    key_dir: Path
    """Where demo keys are generated on first run when no key is configured (never committed)."""
    issuer_key: str
    """`PAYGATE_ENOTE_ISSUER_KEY`: the collecting unit's SM2 private key, PEM text or a path."""
    issuer_cert_serial: str
    supervisor_key: str
    """`PAYGATE_ENOTE_SUPERVISOR_KEY`: the finance department's (监制) SM2 key, PEM or a path."""
    supervisor_cert_serial: str
    note_class: str
    """Two-digit note class inside the note code (region + class + kind + year)."""
    handler: str
    checker: str
    retired_keys: tuple[str, ...] = ()
    """`PAYGATE_ENOTE_RETIRED_KEYS`: public keys of earlier signing keys (hex points or PEM
    files, comma-separated), kept so notes signed before a rotation still verify."""

    @classmethod
    def from_env(cls) -> EnoteSettings:
        issuer, supervisor = _env("PAYGATE_ENOTE_ISSUER_KEY"), _env("PAYGATE_ENOTE_SUPERVISOR_KEY")
        if _env("PAYGATE_ENV") == "production" and not (issuer and supervisor):
            # Refuse to start rather than sign with generated keys no finance office holds.
            raise KeyConfigError(
                "PAYGATE_ENOTE_ISSUER_KEY and PAYGATE_ENOTE_SUPERVISOR_KEY (SM2 private keys)"
                " must be set in production; demo keys are generated only outside it"
            )
        return cls(
            key_dir=Path(_env("PAYGATE_ENOTE_KEY_DIR", "var/enote")),
            issuer_key=issuer,
            issuer_cert_serial=_env("PAYGATE_ENOTE_ISSUER_CERT_SERIAL"),
            supervisor_key=supervisor,
            supervisor_cert_serial=_env("PAYGATE_ENOTE_SUPERVISOR_CERT_SERIAL"),
            note_class=_env("PAYGATE_ENOTE_CLASS", "01"),
            handler=_env("PAYGATE_ENOTE_HANDLER", "paygate"),
            checker=_env("PAYGATE_ENOTE_CHECKER", "财政电子票据系统"),
            retired_keys=tuple(
                k.strip() for k in _env("PAYGATE_ENOTE_RETIRED_KEYS").split(",") if k.strip()
            ),
        )


@dataclass(frozen=True, slots=True)
class BankSettings:
    """One bank on the bank interface (docs/channels/bank.md): its code, its HMAC secret and
    where it listens."""

    code: str
    """The bank's 3-digit code (e.g. ICBC 102, ABC 103); the channel is `bank:<code>`."""
    secret: bytes
    base_url: str


def _parse_banks(raw: str) -> tuple[BankSettings, ...]:
    """`PAYGATE_BANKS="102=<secret>@http://host:port/banks/102,103=..."`."""
    banks: list[BankSettings] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        code, _, rest = part.partition("=")
        secret, _, url = rest.partition("@")
        if not (code.isdigit() and len(code) <= 11 and secret and url):
            # the channel name `bank:<code>` must fit the 16-character channel columns
            raise ValueError("PAYGATE_BANKS entries are '<code>=<secret>@<base url>'")
        banks.append(BankSettings(code=code, secret=secret.encode(), base_url=url.rstrip("/")))
    return tuple(banks)


@dataclass(frozen=True, slots=True)
class KioskSettings:
    """Self-service kiosks: their acquirer (queries and refunds) and the key that signs our
    answers to SM2 devices. The channel `kiosk` exists when the acquirer is configured."""

    acquirer_url: str
    """`PAYGATE_KIOSK_ACQUIRER_URL`, e.g. http://acquirer.example/kiosk-acquirer."""
    acquirer_secret: bytes
    """`PAYGATE_KIOSK_ACQUIRER_SECRET`: HMAC secret shared with the acquirer."""
    sm2_key: str
    """`PAYGATE_KIOSK_SM2_KEY`: the platform's SM2 private key (PEM text or a path); unset,
    a demo key is generated under `PAYGATE_KIOSK_KEY_DIR` (refused in production)."""
    key_dir: Path
    key_cache_s: float = 5.0
    """`PAYGATE_KIOSK_KEY_CACHE_S`: how long a process reuses a device's key and enabled
    flag (so a disable or a rotation takes effect within it)."""

    @property
    def enabled(self) -> bool:
        return bool(self.acquirer_url)

    @classmethod
    def from_env(cls) -> KioskSettings:
        return cls(
            acquirer_url=_env("PAYGATE_KIOSK_ACQUIRER_URL").rstrip("/"),
            acquirer_secret=_env("PAYGATE_KIOSK_ACQUIRER_SECRET").encode(),
            sm2_key=_env("PAYGATE_KIOSK_SM2_KEY"),
            key_dir=Path(_env("PAYGATE_KIOSK_KEY_DIR", "var/kiosk")),
            key_cache_s=_env_float("PAYGATE_KIOSK_KEY_CACHE_S", 5.0),
        )


@dataclass(frozen=True, slots=True)
class PosAcquirerSettings:
    """The card terminals' acquirer (docs/channels/pos.md, "The acquirer"): refunds of card
    sales and the daily settlement file. Unset, the channel `pos` still takes terminals'
    messages, but its duplicates' refunds fail for finance and there is no statement."""

    url: str = ""
    """`PAYGATE_POS_ACQUIRER_URL`, e.g. http://acquirer.example/pos-acquirer."""
    secret: bytes = b""
    """`PAYGATE_POS_ACQUIRER_SECRET`: HMAC secret shared with the acquirer."""

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @classmethod
    def from_env(cls) -> PosAcquirerSettings:
        return cls(
            url=_env("PAYGATE_POS_ACQUIRER_URL").rstrip("/"),
            secret=_env("PAYGATE_POS_ACQUIRER_SECRET").encode(),
        )


@dataclass(frozen=True, slots=True)
class PaymentSettings:
    attempt_ttl_s: int
    """How long a payment attempt stays open before the worker closes it."""
    first_check_s: int
    """Recovery queries an open attempt this long after creation (a notify may never come)."""
    lookup_rate_limit: int
    """Citizen lookups per client IP per window (against payment-code enumeration)."""
    lookup_rate_window_s: int
    summary_cache_ttl_s: int
    guess_budget: int = 10
    """`PAYGATE_GUESS_BUDGET`: failed second factors per payment code, and wrong check codes
    per e-note, allowed per guess window from all clients together; then that code or note
    answers 429 until the window ends."""
    guess_window_s: int = 3600
    banks: tuple[BankSettings, ...] = ()
    kiosk: KioskSettings = field(default_factory=KioskSettings.from_env)
    pos_acquirer: PosAcquirerSettings = field(default_factory=PosAcquirerSettings.from_env)

    @classmethod
    def from_env(cls) -> PaymentSettings:
        return cls(
            attempt_ttl_s=_env_int("PAYGATE_ATTEMPT_TTL_S", 30 * 60),
            first_check_s=_env_int("PAYGATE_ATTEMPT_FIRST_CHECK_S", 3 * 60),
            lookup_rate_limit=_env_int("PAYGATE_LOOKUP_RATE_LIMIT", 30),
            lookup_rate_window_s=_env_int("PAYGATE_LOOKUP_RATE_WINDOW_S", 60),
            summary_cache_ttl_s=_env_int("PAYGATE_SUMMARY_CACHE_TTL_S", 300),
            guess_budget=_env_int("PAYGATE_GUESS_BUDGET", 10),
            guess_window_s=_env_int("PAYGATE_GUESS_WINDOW_S", 3600),
            banks=_parse_banks(_env("PAYGATE_BANKS")),
            kiosk=KioskSettings.from_env(),
            pos_acquirer=PosAcquirerSettings.from_env(),
        )


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings.from_env)
    redis: RedisSettings = field(default_factory=RedisSettings.from_env)
    server: ServerSettings = field(default_factory=ServerSettings.from_env)
    log: LogSettings = field(default_factory=LogSettings.from_env)
    alipay: AlipayConfig = field(default_factory=alipay_from_env)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings.from_env)
    crypto: KeySettings = field(default_factory=KeySettings.from_env)
    enote: EnoteSettings = field(default_factory=EnoteSettings.from_env)
    payments: PaymentSettings = field(default_factory=PaymentSettings.from_env)
    billing: BillingSettings = field(default_factory=BillingSettings.from_env)
    settlement: SettlementSettings = field(default_factory=SettlementSettings.from_env)
    environment: str = field(default_factory=lambda: _env("PAYGATE_ENV", "development"))

    @classmethod
    def from_env(cls) -> Settings:
        return cls()

    @property
    def is_production(self) -> bool:
        return self.environment == "production"
