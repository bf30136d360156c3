"""Schemathesis against our OpenAPI document: generated requests (valid and invalid) to the
agency and finance endpoints, signed or with a staff token as a client would send them,
over real HTTP; none may be answered with a 5xx. Bounded (a few examples per operation,
no shrinking) so it stays well under a minute."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import unquote, urlsplit

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode

from gateway.app import create_app
from gateway.auth import authorization_header
from gateway.settings import Settings
from gateway.state import Resources
from kernel.staff import create_staff
from tests.agency_client import bill_body, make_agency_with_key
from tests.servers import ServerThread

PREFIXES = ("/v1/bills", "/v1/webhooks", "/v1/settlement")
EXAMPLES = 12


class _AgencySigner(requests.auth.AuthBase):
    """Signs the request exactly as sent (path, query, body), as an agency client does."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id, self.secret = key_id, secret

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urlsplit(r.url or "")
        body = r.body or b""
        r.headers["Authorization"] = authorization_header(
            self.key_id,
            self.secret,
            method=r.method or "GET",
            path=unquote(parts.path),
            query=parts.query,
            body=body.encode() if isinstance(body, str) else body,
        )
        return r


def _fuzz(  # noqa: PLR0917 - what one operation's run needs
    operation: Any,
    mode: GenerationMode,
    url: str,
    session: requests.Session,
    kwargs: dict[str, Any],
    sent: list[int],
    failures: list[str],
) -> Any:
    """A bounded, deterministic Hypothesis run of `operation` against the server at `url`."""

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        resp = case.call(base_url=url, session=session, timeout=30, **kwargs)
        sent.append(resp.status_code)
        if resp.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} {case.query} {case.body!r}"
                f" -> {resp.status_code} {resp.text[:200]}"
            )

    return run


@pytest.mark.slow
async def test_fuzzed_agency_and_finance_requests_never_get_a_5xx(
    settings: Settings, res: Resources
) -> None:
    agency = await make_agency_with_key(res)
    async with res.sessions() as s:
        _, token = await create_staff(s, name="wang", role="finance")
        await s.commit()
    app = create_app(settings)
    schema = schemathesis.openapi.from_dict(app.openapi_schema.to_schema())
    operations = [
        op.ok() for op in schema.get_all_operations() if op.ok().path.startswith(PREFIXES)
    ]
    assert len(operations) >= 15  # the bills, webhooks and settlement operations
    signer = _AgencySigner(agency.key_id, agency.secret)
    failures: list[str] = []
    sent: list[int] = []

    def exercise(server: ServerThread) -> None:
        session = requests.Session()
        created = session.post(
            f"{server.url}/v1/bills", json=bill_body("FUZZ-1"), auth=signer, timeout=30
        )
        assert created.status_code == 201, created.text
        for operation in operations:
            finance = operation.path.startswith("/v1/settlement")
            kwargs: dict[str, Any] = (
                {"headers": {"Authorization": f"Bearer {token}"}} if finance else {"auth": signer}
            )
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run = _fuzz(operation, mode, server.url, session, kwargs, sent, failures)
                # Unsatisfiable: nothing in this operation can be made invalid (no parameters).
                with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                    run()

    with ServerThread(app) as server:
        await asyncio.to_thread(exercise, server)
    assert len(sent) > 10 * len(operations)
    assert failures == []
