"""`return_url` (where a channel sends the browser after paying) is an http(s) URL on one
of our hosts, or a 422 problem that writes nothing: never an open redirect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import Resources
from payments.models import PaymentAttempt
from tests.payments_support import bill_for_test

AGENCY_HOST = "pay.example.gov.cn"


@pytest.fixture
async def client(
    res: Resources, bank_settings: Settings
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    hosts = bank_settings.server.return_url_hosts | {AGENCY_HOST}
    configured = replace(
        bank_settings, server=replace(bank_settings.server, return_url_hosts=hosts)
    )
    async with AsyncTestClient(app=create_app(configured)) as c:
        yield c


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(document.cookie)",
        "JavaScript://127.0.0.1/%0Aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "https://evil.example/",
        "//evil.example/",
        "/relative/path",
        "ftp://127.0.0.1/",
        "https://127.0.0.1.evil.example/",
        "http://127.0.0.1@evil.example/",
        "https://evil.example\\@127.0.0.1/",
        "http://user:pw@127.0.0.1/",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1/\r\nSet-Cookie: x=1",
    ],
)
async def test_a_foreign_or_scriptable_return_url_is_refused(
    res: Resources, client: AsyncTestClient[Litestar], url: str
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    r = await client.post(
        f"/v1/pay/{bill.payment_code}/attempts",
        json={"channel": "bank:102", "mode": "code", "return_url": url},
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "return_url_not_allowed"
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(PaymentAttempt)) == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/pay/back?x=1",  # PAYGATE_PUBLIC_URL's host
        f"https://{AGENCY_HOST}/done",  # a registered host (PAYGATE_RETURN_URL_HOSTS)
        f"HTTPS://{AGENCY_HOST.upper()}:8443/done",
    ],
)
async def test_our_hosts_are_accepted(
    res: Resources, client: AsyncTestClient[Litestar], url: str
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    r = await client.post(
        f"/v1/pay/{bill.payment_code}/attempts",
        json={"channel": "bank:102", "mode": "code", "return_url": url},
    )
    assert r.status_code == 201, r.text


def test_return_url_hosts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.settings import ServerSettings

    monkeypatch.setenv("PAYGATE_PUBLIC_URL", "https://pay.finance.example.gov.cn")
    monkeypatch.setenv("PAYGATE_RETURN_URL_HOSTS", "A.example.gov.cn, b.example.gov.cn")
    hosts = ServerSettings.from_env().return_url_hosts
    assert hosts == {"pay.finance.example.gov.cn", "a.example.gov.cn", "b.example.gov.cn"}
