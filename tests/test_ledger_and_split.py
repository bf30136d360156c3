"""Ledger guards and verification, business day cutoff, and the sum-preserving split."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import ledger
from gateway.state import Resources
from kernel.clock import SHANGHAI, business_date, day_bounds
from settlement.split import split_fen


async def test_posting_is_balanced_idempotent_and_reversible(res: Resources) -> None:
    async with res.sessions() as s:
        first = await ledger.post(
            s, kind="test", ref="a", lines=[("clearing:alipay", 500), ("revenue_pending", -500)]
        )
        again = await ledger.post(
            s, kind="test", ref="a", lines=[("clearing:alipay", 500), ("revenue_pending", -500)]
        )
        assert first.created
        assert not again.created
        assert first.entry_id == again.entry_id
        await ledger.reverse(s, first.entry_id)
        with pytest.raises(ledger.LedgerError):
            await ledger.post(s, kind="test", ref="b", lines=[("suspense", 1)])
        await s.commit()
        assert await ledger.balances(s) == {"clearing:alipay": 0, "revenue_pending": 0}
        report = await ledger.verify(s)
    assert report.ok
    assert report.entries == 2
    assert report.lines == 4


async def test_database_refuses_unbalanced_entries_and_edits(res: Resources) -> None:
    async with res.sessions() as s:
        posted = await ledger.post(
            s, kind="test", ref="x", lines={"collection": 100, "clearing:bank": -100}
        )
        await s.commit()
    async with res.sessions() as s:
        await s.execute(
            text("INSERT INTO journal_entries (kind, ref) VALUES ('test', 'bad') RETURNING id")
        )
        await s.execute(
            text(
                "INSERT INTO journal_lines (entry_id, account_id, amount)"
                " SELECT e.id, a.id, 100 FROM journal_entries e, ledger_accounts a"
                " WHERE e.ref = 'bad' AND a.code = 'collection'"
            )
        )
        with pytest.raises(DBAPIError, match="unbalanced"):
            await s.commit()
    for sql in (
        "UPDATE journal_lines SET amount = amount * 2",
        f"DELETE FROM journal_entries WHERE id = {posted.entry_id}",
    ):
        async with res.sessions() as s:
            with pytest.raises(DBAPIError, match="append-only"):
                await s.execute(text(sql))
    # The balance column is derived: verify catches it when it drifts from the lines.
    async with res.sessions() as s:
        assert await ledger.rollup(s) == 2  # the entry's two lines, folded in once
        assert await ledger.rollup(s) == 0
        assert (await ledger.balances(s))["collection"] == 100
        assert (await ledger.verify(s)).ok
        await s.execute(text("UPDATE ledger_accounts SET balance = 7 WHERE code = 'collection'"))
        report = await ledger.verify(s)
    assert not report.ok
    assert report.drifted_accounts == {"collection": (7, 100)}


def test_business_day_follows_the_cutoff_in_shanghai() -> None:
    late = datetime(2026, 11, 20, 22, 59, 59, tzinfo=SHANGHAI)
    cut = datetime(2026, 11, 20, 23, 0, tzinfo=SHANGHAI)
    assert business_date(late, time(23, 0)) == date(2026, 11, 20)
    assert business_date(cut, time(23, 0)) == date(2026, 11, 21)
    assert business_date(cut) == date(2026, 11, 20)
    # 16:30 UTC is 00:30 the next day in Beijing.
    assert business_date(datetime(2026, 11, 20, 16, 30, tzinfo=UTC)) == date(2026, 11, 21)
    start, end = day_bounds(date(2026, 11, 21), time(23, 0))
    assert start == cut
    assert business_date(start, time(23, 0)) == date(2026, 11, 21)
    assert business_date(end, time(23, 0)) == date(2026, 11, 22)
    with pytest.raises(ValueError, match="timezone"):
        business_date(datetime(2026, 11, 20, 12, 0), time(23, 0))  # noqa: DTZ001


@given(
    total=st.integers(min_value=-(10**12), max_value=10**12),
    weights=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=8).filter(
        any
    ),
)
def test_split_never_loses_or_invents_a_fen(total: int, weights: list[int]) -> None:
    shares = split_fen(total, weights)
    assert sum(shares) == total
    assert shares == split_fen(total, list(weights))  # deterministic
    wsum = sum(weights)
    for share, w in zip(shares, weights, strict=True):
        exact = Fraction(total * w, wsum)
        assert abs(share - exact) < 1
        if w == 0:
            assert share == 0


def test_split_breaks_ties_by_position() -> None:
    assert split_fen(100, [1, 1, 1]) == [34, 33, 33]
    assert split_fen(1, [3333, 3333, 3334]) == [0, 0, 1]
    with pytest.raises(ValueError, match="zero"):
        split_fen(5, [0, 0])
