"""Every PAYGATE_* variable the service reads is documented in the README, and every one the
README documents is read; every setting read is used somewhere."""

from __future__ import annotations

import ast
import dataclasses
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from channels.alipay.adapter import AlipayAdapter
from channels.alipay.config import AlipayConfig
from channels.alipay.keys import KeySet
from channels.alipay.transforms import BEIJING
from channels.base import CreatePayment
from gateway import settings as settings_module
from kernel.crypto import KeySettings
from tests.alipay_support import Receiver, SimServer, settings_for

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ("gateway", "kernel", "billing", "channels", "payments", "enotes", "settlement", "ledger")
VARIABLE = re.compile(r"PAYGATE_[A-Z0-9_]*[A-Z0-9]")


def _sources() -> list[Path]:
    return [p for room in SERVICE for p in sorted((ROOT / room).rglob("*.py"))]


def _read_variables() -> set[str]:
    """Names the code passes around as strings (`os.environ.get("PAYGATE_X")`, `_env(...)`),
    not mentions in docstrings or messages."""
    names: set[str] = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and VARIABLE.fullmatch(value):
                names.add(value)
    return names


def test_every_variable_read_is_documented_and_every_documented_one_is_read() -> None:
    documented = set(VARIABLE.findall((ROOT / "README.md").read_text(encoding="utf-8")))
    read = _read_variables()
    assert read - documented == set(), "read but not in README.md"
    assert documented - read == set(), "in README.md but never read"


def test_every_setting_read_is_used() -> None:
    """A field that is filled from the environment and never looked at is a knob that does
    nothing (PAYGATE_ALIPAY_NOTIFY_BASE_URL was one)."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in _sources())
    classes = {
        c
        for c in vars(settings_module).values()
        if isinstance(c, type) and dataclasses.is_dataclass(c)
    } | {AlipayConfig, KeySettings}
    unused = [
        f"{c.__name__}.{f.name}"
        for c in classes
        for f in dataclasses.fields(c)
        if not re.search(rf"\.{f.name}\b", text)
    ]
    assert unused == []


async def test_alipay_posts_notifications_under_the_notify_base_url(
    alipay_keys: KeySet, alipay_sim: SimServer, notify_receiver: Receiver
) -> None:
    """PAYGATE_ALIPAY_NOTIFY_BASE_URL replaces the service's own base in the notify_url
    given to Alipay: the simulator posts to the receiver, not to the unreachable default."""
    parts = urlsplit(notify_receiver.url)  # the receiver answers on any path
    base = f"{parts.scheme}://{parts.netloc}"
    adapter = AlipayAdapter(settings_for(alipay_keys, alipay_sim.gateway_url, notify_base_url=base))
    attempt = f"T{secrets.token_hex(8)}"
    try:
        await adapter.create_payment(
            CreatePayment(
                attempt_id=attempt,
                amount=500,
                subject="交通违法罚没收入",
                mode="qr",
                expires_at=datetime.now(BEIJING) + timedelta(minutes=30),
                notify_url="http://127.0.0.1:9/v1/channels/alipay/notify",  # nobody listens
            )
        )
        assert alipay_sim.control("POST", f"/sim/trades/{attempt}/pay")[0] == 200
        [body] = await notify_receiver.wait_for(1)
        note = adapter.parse_notification(body, notify_receiver.content_types[0])
        assert (note.attempt_id, note.amount) == (attempt, 500)
    finally:
        await adapter.aclose()
