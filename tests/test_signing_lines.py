"""Where e-note signatures are computed: signing processes (software keys) and threads (any
other signer), and the worker's two-lane issuing over them."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from enotes import service as enotes
from enotes.models import ENote
from enotes.service import EnoteContext, issue_pending, verify_note
from enotes.signing import NoteSigners, Signer, SM2Signer, signed_by_supervisor
from enotes.signing_lines import ProcessLine, Signed, SigningUnavailable, ThreadLine, line_for
from gateway import enotes as gateway_enotes
from gateway.settings import Settings
from gateway.state import Resources
from kernel.models import OutboxMessage
from tests.enote_helpers import agency_with_items, paid_bill


@pytest.fixture(scope="module")
def signers() -> NoteSigners:
    return NoteSigners(SM2Signer.generate("T-ISSUER"), SM2Signer.generate("T-FIN"))


@pytest.fixture
def process_line(signers: NoteSigners) -> Iterator[ProcessLine]:
    line = ProcessLine(signers, processes=2)
    yield line
    line.close()


def _check(
    signers: NoteSigners, contents: list[bytes], signed: list[Signed], since: datetime
) -> None:
    assert len(signed) == len(contents)
    for content, (issuer_sig, issuer_at, supervisor_sig, supervisor_at) in zip(
        contents, signed, strict=True
    ):
        assert signers.issuer.verify(content, issuer_sig)
        assert signers.supervisor.verify(signed_by_supervisor(content, issuer_sig), supervisor_sig)
        assert not signers.supervisor.verify(content, supervisor_sig)
        assert since <= issuer_at <= supervisor_at <= datetime.now(UTC)


def test_signing_processes_sign_both_signatures_of_every_note_in_order(
    signers: NoteSigners, process_line: ProcessLine
) -> None:
    since = datetime.now(UTC)
    chunks = [[secrets.token_bytes(n + 1) for n in range(size)] for size in (25, 1, 7, 25, 0)]
    futures = [process_line.sign(chunk) for chunk in chunks]  # in flight together
    for chunk, future in zip(chunks, futures, strict=True):
        _check(signers, chunk, future.result(timeout=30), since)
    assert len(process_line.pids()) == 2


def test_a_killed_signing_process_fails_its_chunk_and_a_new_one_takes_over(
    signers: NoteSigners, process_line: ProcessLine
) -> None:
    process_line.sign([b"warm"]).result(timeout=30)
    before = process_line.pids()
    # Enough work that both processes are still signing when they are killed.
    futures = [process_line.sign([secrets.token_bytes(64)] * 400) for _ in range(2)]
    time.sleep(0.05)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    for future in futures:
        with pytest.raises(SigningUnavailable, match="exited"):
            future.result(timeout=30)

    since = datetime.now(UTC)
    contents = [b"after the crash"]
    _check(signers, contents, process_line.sign(contents).result(timeout=30), since)
    assert set(process_line.pids()).isdisjoint(before)


class _Wrapped:
    """A signer that is not a software key (as an HSM client would be)."""

    def __init__(self, inner: SM2Signer, fail_on: bytes | None = None) -> None:
        self.inner, self.fail_on = inner, fail_on
        self.algorithm, self.key_id, self.cert_serial = (
            inner.algorithm,
            inner.key_id,
            inner.cert_serial,
        )

    def sign(self, message: bytes) -> bytes:
        if message == self.fail_on:
            raise RuntimeError("the HSM refused")
        return self.inner.sign(message)

    def verify(self, message: bytes, signature: bytes) -> bool:
        return self.inner.verify(message, signature)


def test_other_signers_sign_on_threads_and_their_errors_reach_the_caller(
    signers: NoteSigners,
) -> None:
    assert isinstance(signers.issuer, SM2Signer)
    hsm: Signer = _Wrapped(signers.issuer, fail_on=b"refused")
    wrapped = NoteSigners(hsm, signers.supervisor)
    line = line_for(wrapped)
    assert isinstance(line, ThreadLine)
    assert isinstance(line_for(signers), ProcessLine)
    try:
        since = datetime.now(UTC)
        contents = [secrets.token_bytes(100) for _ in range(30)]
        _check(wrapped, contents, line.sign(contents).result(timeout=30), since)
        with pytest.raises(RuntimeError, match="refused"):
            line.sign([b"fine", b"refused", b"fine too"]).result(timeout=30)
        assert line.sign([]).result(timeout=1) == []
    finally:
        line.close()


async def test_two_issuing_lanes_number_every_note_once_without_gaps(
    res: Resources, settings: Settings
) -> None:
    ctx = gateway_enotes.enote_context(settings)
    async with res.sessions() as s, s.begin():
        agency, fine, _ = await agency_with_items(s)
        receipts = [(await paid_bill(s, agency, [(fine, 1, 100 + n)]))[1] for n in range(130)]

    # Small batches, so each lane takes several turns at the counter lock.
    assert await issue_pending(res.sessions, ctx, lanes=2, limit=20, batches=10) == 130
    assert await issue_pending(res.sessions, ctx) == 0

    async with res.sessions() as s:
        notes = list((await s.scalars(select(ENote).order_by(ENote.note_number))).all())
    assert [n.note_number for n in notes] == [f"{i:010d}" for i in range(1, 131)]
    assert sorted(str(n.receipt_id) for n in notes) == sorted(str(r.id) for r in receipts)
    keyring = ctx.signers.keyring()
    assert {verify_note(n, keyring).status for n in notes} == {"valid"}


async def test_stopping_the_worker_ends_the_signing_processes(
    res: Resources, settings: Settings
) -> None:
    ctx: EnoteContext = gateway_enotes.enote_context(settings)
    line = ctx.signing_line()
    assert isinstance(line, ProcessLine)
    line.sign([b"start"]).result(timeout=30)
    pids = line.pids()
    assert pids

    await gateway_enotes.close_signing()

    assert line.pids() == []
    for pid in pids:  # reaped by close(): the pid is gone, not a zombie
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_signer_that_stops_answering_fails_the_batch_and_changes_nothing(
    res: Resources, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = gateway_enotes.enote_context(settings)
    issuer = ctx.signers.issuer
    assert isinstance(issuer, SM2Signer)
    gate = threading.Event()

    class Stuck(_Wrapped):
        def sign(self, message: bytes) -> bytes:
            gate.wait(30)  # an HSM that stopped answering
            return super().sign(message)

    stuck = EnoteContext(NoteSigners(Stuck(issuer), ctx.signers.supervisor), ctx.config)
    monkeypatch.setattr(enotes, "SIGN_TIMEOUT_S", 0.3)  # read where it is used
    async with res.sessions() as s, s.begin():
        agency, fine, _ = await agency_with_items(s)
        await paid_bill(s, agency, [(fine, 1, 5_000)])
    try:
        with pytest.raises(TimeoutError):
            await enotes.run_issue_job(res.sessions, stuck)
    finally:
        gate.set()
        stuck.close()

    async with res.sessions() as s:
        assert (await s.scalars(select(ENote))).all() == []
        pending = await s.scalars(select(OutboxMessage).where(OutboxMessage.processed_at.is_(None)))
        assert [m.topic for m in pending] == ["enote.issue"]  # waits for a working signer
    # The same message issues once the signer answers again, with its usual time budget (0.3 s
    # is too short for a signer process that is restarting on a loaded machine).
    monkeypatch.undo()
    assert await enotes.run_issue_job(res.sessions, ctx) == 1
