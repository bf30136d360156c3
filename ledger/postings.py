"""Double-entry ledger: every money movement is one balanced journal entry, posted in the
caller's transaction (the same one as the business change it records).

Accounts (codes are data, created on first use):

- ``clearing:<channel>``   the channel owes us money it collected (asset)
- ``collection``           the agency bank's collection account (asset, cash)
- ``revenue_pending``      revenue collected, not yet allocated to a treasury (liability)
- ``treasury:<code>``      owed to one treasury (region × level) until deposited (liability)
- ``fiscal_special``       the fiscal special account (财政专户), for fund type 2 batches
- ``refunds_payable``      money we owe back to payers (duplicates, treasury refunds)
- ``suspense``             unidentified money (待处理) until identified or returned
- ``channel_fees:<channel>`` fees a channel charged (expense)

Signs: a line's amount is debit-positive, credit-negative, so an entry balances when its
amounts sum to zero; the database refuses to commit one that doesn't. Entries are never
updated: `reverse()` posts the mirror image.

Postings:

- receipt (PAYMENT):  Dr clearing:ch            / Cr revenue_pending
- duplicate:          Dr clearing:ch            / Cr refunds_payable
- channel refund:     Dr revenue_pending (or refunds_payable for a duplicate) / Cr clearing:ch
- fee:                Dr channel_fees:ch        / Cr clearing:ch
- suspense:           Dr clearing:ch            / Cr suspense
- sweep (settle day): Dr collection / Cr clearing:ch (per channel), and
                      Dr revenue_pending / Cr treasury:<code> (per batch)
                      Dr treasury:<code> / Cr refunds_payable (treasury refunds in a batch)
- deposit (export):   Dr treasury:<code>        / Cr collection
- payout (treasury refund paid by bank transfer, confirmed):
                      Dr refunds_payable        / Cr collection
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date

import structlog
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ledger.models import JournalEntry, JournalLine, LedgerAccount

Executor = AsyncSession | AsyncConnection
"""Postings are Core statements: they run in an ORM session or on a bare connection."""

log = structlog.get_logger(__name__)

COLLECTION = "collection"
REVENUE_PENDING = "revenue_pending"
REFUNDS_PAYABLE = "refunds_payable"
SUSPENSE = "suspense"
FISCAL_SPECIAL = "fiscal_special"

_KINDS = {
    "clearing": "asset",
    COLLECTION: "asset",
    REVENUE_PENDING: "liability",
    "treasury": "liability",
    FISCAL_SPECIAL: "liability",
    REFUNDS_PAYABLE: "liability",
    SUSPENSE: "liability",
    "channel_fees": "expense",
}


def clearing(channel: str) -> str:
    return f"clearing:{channel}"


def channel_fees(channel: str) -> str:
    return f"channel_fees:{channel}"


def treasury(treasury_code: str) -> str:
    return f"treasury:{treasury_code}"


class LedgerError(Exception):
    """A posting that can never be right (unbalanced, empty): a programming error."""


@dataclass(frozen=True, slots=True)
class Posted:
    entry_id: int
    created: bool
    """False when (kind, ref) was already posted: posting is idempotent per business event."""


async def account_ids(session: Executor, codes: Iterable[str]) -> dict[str, int]:
    """Account ids by code, creating the missing accounts (an account is data)."""
    wanted = sorted(set(codes))
    found = dict(
        (
            await session.execute(
                select(LedgerAccount.code, LedgerAccount.id).where(LedgerAccount.code.in_(wanted))
            )
        ).all()
    )
    missing = [c for c in wanted if c not in found]
    if missing:
        rows = [{"code": c, "kind": _KINDS[c.split(":", 1)[0]]} for c in missing]
        await session.execute(
            insert(LedgerAccount).values(rows).on_conflict_do_nothing(index_elements=["code"])
        )
        result = await session.execute(
            select(LedgerAccount.code, LedgerAccount.id).where(LedgerAccount.code.in_(missing))
        )
        found.update(result.all())
    return found


async def post(
    session: Executor,
    *,
    kind: str,
    ref: str,
    lines: Mapping[str, int] | Iterable[tuple[str, int]],
    business_date: date | None = None,
    memo: str = "",
    reverses_id: int | None = None,
) -> Posted:
    """Post one balanced entry; lines are (account code, debit-positive fen).

    Idempotent: a second posting with the same (kind, ref) changes nothing and returns the
    first entry. Balances are updated in the same transaction as the lines.
    """
    pairs = list(lines.items()) if isinstance(lines, Mapping) else list(lines)
    net: dict[str, int] = defaultdict(int)
    for code, amount in pairs:
        net[code] += amount
    legs = {code: amount for code, amount in net.items() if amount}
    if sum(legs.values()) != 0:
        raise LedgerError(f"unbalanced entry {kind}/{ref}: {dict(net)}")
    if not legs:
        raise LedgerError(f"empty entry {kind}/{ref}")
    codes = sorted(legs)
    amounts = [legs[c] for c in codes]
    # Entry, lines and their "pending" marks in one statement (the hot path of every
    # confirmation). No account row is locked (see LedgerAccount), so concurrent postings
    # never queue on a balance.
    row = (
        await session.execute(
            _POST,
            {
                "kind": kind,
                "ref": ref,
                "business_date": business_date,
                "memo": memo,
                "reverses_id": reverses_id,
                "codes": codes,
                "amounts": amounts,
            },
        )
    ).first()
    if row is None:
        existing = await session.scalar(
            select(JournalEntry.id).where(JournalEntry.kind == kind, JournalEntry.ref == ref)
        )
        assert existing is not None
        return Posted(existing, created=False)
    entry_id, lines_written = int(row[0]), int(row[1])
    if lines_written < len(codes):
        # An account's first posting: create it, then add the lines it missed. The entry
        # is checked for balance at commit (deferred trigger), so this completes it.
        have = set(
            await session.scalars(
                select(LedgerAccount.code)
                .join(JournalLine, JournalLine.account_id == LedgerAccount.id)
                .where(JournalLine.entry_id == entry_id)
            )
        )
        missing = [c for c in codes if c not in have]
        ids = await account_ids(session, missing)
        await session.execute(
            _LINES,
            {
                "entry_id": entry_id,
                "accounts": [ids[c] for c in missing],
                "amounts": [legs[c] for c in missing],
            },
        )
    log.debug("ledger posted", kind=kind, ref=ref, entry_id=entry_id)
    return Posted(entry_id, created=True)


async def reverse(session: AsyncSession, entry_id: int, *, memo: str = "") -> Posted:
    """Post the mirror image of an entry (the only way to correct one)."""
    entry = await session.get(JournalEntry, entry_id)
    if entry is None:
        raise LedgerError(f"no journal entry {entry_id}")
    rows = await session.execute(
        select(LedgerAccount.code, JournalLine.amount)
        .join(LedgerAccount, LedgerAccount.id == JournalLine.account_id)
        .where(JournalLine.entry_id == entry_id)
    )
    return await post(
        session,
        kind="reversal",
        ref=str(entry_id),
        lines=[(code, -amount) for code, amount in rows],
        business_date=entry.business_date,
        memo=memo or f"reverses {entry.kind}/{entry.ref}",
        reverses_id=entry_id,
    )


# ------------------------------------------------------------------ business postings


def receipt_lines(kind: str, channel: str, amount: int) -> list[tuple[str, int]]:
    """A receipt's legs: the channel owes us the money; it is revenue (PAYMENT) or owed back
    to the payer (DUPLICATE)."""
    credit = REVENUE_PENDING if kind == "PAYMENT" else REFUNDS_PAYABLE
    return [(clearing(channel), amount), (credit, -amount)]


def receipt_memo(kind: str, channel: str) -> str:
    return f"{kind.lower()} via {channel}"


async def post_receipt(
    session: Executor,
    *,
    receipt_id: uuid.UUID,
    kind: str,
    channel: str,
    amount: int,
    business_date: date,
) -> Posted:
    """A confirmed receipt: the payment (revenue) or a duplicate (owed back to the payer)."""
    return await post(
        session,
        kind="receipt",
        ref=str(receipt_id),
        lines=receipt_lines(kind, channel, amount),
        business_date=business_date,
        memo=receipt_memo(kind, channel),
    )


async def post_refund(
    session: Executor,
    *,
    refund_id: uuid.UUID,
    amount: int,
    receipt_kind: str,
    channel: str,
    business_date: date,
) -> Posted:
    """A refund that succeeded at the channel: what the receipt credited is debited back.

    Treasury refunds are posted by the sweep of the batch that carries them.
    """
    debit = REVENUE_PENDING if receipt_kind == "PAYMENT" else REFUNDS_PAYABLE
    return await post(
        session,
        kind="refund",
        ref=str(refund_id),
        lines=[(debit, amount), (clearing(channel), -amount)],
        business_date=business_date,
        memo=f"refund via {channel}",
    )


async def post_fee(
    session: AsyncSession, *, channel: str, ref: str, amount: int, business_date: date
) -> Posted:
    return await post(
        session,
        kind="fee",
        ref=ref,
        lines=[(channel_fees(channel), amount), (clearing(channel), -amount)],
        business_date=business_date,
        memo=f"{channel} fees",
    )


async def post_suspense(
    session: AsyncSession, *, channel: str, ref: str, amount: int, business_date: date
) -> Posted:
    """Money a channel holds for a trade we cannot identify: park it in suspense (待处理)."""
    return await post(
        session,
        kind="suspense",
        ref=ref,
        lines=[(clearing(channel), amount), (SUSPENSE, -amount)],
        business_date=business_date,
        memo=f"unidentified {channel} trade",
    )


async def post_sweep(
    session: AsyncSession,
    *,
    settlement_id: uuid.UUID,
    business_date: date,
    per_channel: Mapping[str, int],
    per_treasury: Mapping[str, int],
    refunds_per_treasury: Mapping[str, int] | None = None,
) -> Posted:
    """Settle a day: cash from each channel's clearing into the collection account, and the
    day's revenue allocated to the treasuries; treasury refunds (positive fen) become owed
    to payers."""
    lines: list[tuple[str, int]] = []
    for ch, amount in per_channel.items():
        lines += [(COLLECTION, amount), (clearing(ch), -amount)]
    for code, amount in per_treasury.items():
        lines += [(REVENUE_PENDING, amount), (treasury(code), -amount)]
    for code, amount in (refunds_per_treasury or {}).items():
        lines += [(treasury(code), amount), (REFUNDS_PAYABLE, -amount)]
    return await post(
        session,
        kind="sweep",
        ref=str(settlement_id),
        lines=lines,
        business_date=business_date,
        memo=f"settlement of {business_date.isoformat()}",
    )


async def post_deposit(
    session: AsyncSession,
    *,
    batch_id: uuid.UUID,
    treasury_code: str,
    amount: int,
    business_date: date,
) -> Posted:
    """An exported deposit batch: the collection account pays the treasury its net total."""
    return await post(
        session,
        kind="deposit",
        ref=str(batch_id),
        lines=[(treasury(treasury_code), amount), (COLLECTION, -amount)],
        business_date=business_date,
        memo=f"deposit to treasury {treasury_code}",
    )


async def post_payout(
    session: AsyncSession, *, refund_id: uuid.UUID, amount: int, business_date: date
) -> Posted:
    """A treasury refund paid out: the collection account pays the payer what was owed."""
    return await post(
        session,
        kind="payout",
        ref=str(refund_id),
        lines=[(REFUNDS_PAYABLE, amount), (COLLECTION, -amount)],
        business_date=business_date,
        memo="treasury refund paid out",
    )


# ------------------------------------------------------------------ verification


@dataclass
class VerifyReport:
    entries: int = 0
    lines: int = 0
    accounts: int = 0
    unbalanced_entries: list[int] = field(default_factory=list)
    short_entries: list[int] = field(default_factory=list)
    """Entries with fewer than two lines."""
    drifted_accounts: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Account code → (stored balance, Σ its lines)."""
    trial_balance: int = 0
    """Σ of every account balance; zero in a consistent ledger."""

    @property
    def ok(self) -> bool:
        return not (
            self.unbalanced_entries
            or self.short_entries
            or self.drifted_accounts
            or self.trial_balance
        )


async def verify(session: AsyncSession) -> VerifyReport:
    """Prove every entry balances and every account's balance is the sum of its lines."""
    report = VerifyReport()
    counts = (
        await session.execute(
            text(
                "SELECT (SELECT count(*) FROM journal_entries), (SELECT count(*) FROM"
                " journal_lines), (SELECT count(*) FROM ledger_accounts),"
                " (SELECT coalesce(sum(balance), 0) FROM ledger_accounts)"
                " + (SELECT coalesce(sum(l.amount), 0) FROM ledger_pending p"
                " JOIN journal_lines l ON l.id = p.line_id)"
            )
        )
    ).one()
    report.entries, report.lines, report.accounts, report.trial_balance = map(int, counts)
    bad = await session.execute(
        text(
            "SELECT e.id, coalesce(sum(l.amount), 0), count(l.id) FROM journal_entries e"
            " LEFT JOIN journal_lines l ON l.entry_id = e.id GROUP BY e.id"
            " HAVING coalesce(sum(l.amount), 0) <> 0 OR count(l.id) < 2 ORDER BY e.id"
        )
    )
    for entry_id, total, n in bad:
        if total:
            report.unbalanced_entries.append(int(entry_id))
        if n < 2:
            report.short_entries.append(int(entry_id))
    drift = await session.execute(
        text(
            "SELECT a.code, a.balance + coalesce(p.total, 0), coalesce(s.total, 0)"
            " FROM ledger_accounts a"
            " LEFT JOIN (SELECT account_id, sum(amount) AS total FROM journal_lines"
            " GROUP BY account_id) s ON s.account_id = a.id LEFT JOIN"
            " (SELECT l.account_id, sum(l.amount) AS total FROM ledger_pending lp"
            " JOIN journal_lines l ON l.id = lp.line_id GROUP BY l.account_id) p"
            " ON p.account_id = a.id"
            " WHERE a.balance + coalesce(p.total, 0) <> coalesce(s.total, 0) ORDER BY a.code"
        )
    )
    report.drifted_accounts = {code: (int(b), int(t)) for code, b, t in drift}
    return report


async def balances(session: Executor) -> dict[str, int]:
    """Every account's balance: the stored one plus its lines not yet rolled up."""
    rows = await session.execute(_BALANCES)
    return {code: int(b) for code, b in rows}


async def rollup(session: Executor) -> int:
    """Fold pending lines into stored balances (worker job; set-based, any number of
    concurrent runs: each pending mark is deleted, and so counted, exactly once)."""
    return int((await session.execute(_ROLLUP)).scalar_one())


def posting_ctes(source: str) -> str:
    """The CTEs that post one entry per row of the CTE `source`, whose columns are kind,
    ref, business_date, memo, reverses_id, and codes / amounts (one line per account code;
    an account that does not exist gets no line, which the caller checks): `e` the entries
    (none for a (kind, ref) already posted), `l` their lines, `p` the lines' pending marks.
    Shared by `post` and the confirmations' one statement."""
    return (
        "e AS (INSERT INTO journal_entries (kind, ref, business_date, memo, reverses_id)"  # noqa: S608 - `source` is code
        f" SELECT kind, ref, business_date, memo, reverses_id FROM {source}"
        " ON CONFLICT (kind, ref) DO NOTHING RETURNING id, kind, ref),"
        " l AS (INSERT INTO journal_lines (entry_id, account_id, amount)"
        f" SELECT e.id, a.id, t.m FROM e JOIN {source} AS s ON s.kind = e.kind AND s.ref = e.ref"
        " CROSS JOIN unnest(s.codes, s.amounts) AS t(c, m) JOIN ledger_accounts a ON a.code = t.c"
        " RETURNING id),"
        " p AS (INSERT INTO ledger_pending (line_id) SELECT id FROM l)"
    )


_POST = text(
    "WITH src AS (SELECT CAST(:kind AS varchar) AS kind, CAST(:ref AS varchar) AS ref,"  # noqa: S608 - constants only
    " CAST(:business_date AS date) AS business_date, CAST(:memo AS text) AS memo,"
    " CAST(:reverses_id AS bigint) AS reverses_id, CAST(:codes AS text[]) AS codes,"
    " CAST(:amounts AS bigint[]) AS amounts),"
    f" {posting_ctes('src')}"
    " SELECT e.id, (SELECT count(*) FROM l) FROM e"
)
_LINES = text(
    "WITH l AS (INSERT INTO journal_lines (entry_id, account_id, amount)"
    " SELECT :entry_id, a, m FROM unnest(CAST(:accounts AS integer[]),"
    " CAST(:amounts AS bigint[])) AS t(a, m) RETURNING id)"
    " INSERT INTO ledger_pending (line_id) SELECT id FROM l"
)
_BALANCES = text(
    "SELECT a.code, a.balance + coalesce(p.total, 0) FROM ledger_accounts a"
    " LEFT JOIN (SELECT l.account_id, sum(l.amount) AS total FROM ledger_pending lp"
    " JOIN journal_lines l ON l.id = lp.line_id GROUP BY l.account_id) p"
    " ON p.account_id = a.id"
)
_ROLLUP = text(
    "WITH d AS (DELETE FROM ledger_pending p USING journal_lines l WHERE p.line_id = l.id"
    " RETURNING l.account_id, l.amount),"
    " s AS (SELECT account_id, sum(amount) AS total FROM d GROUP BY account_id),"
    " u AS (UPDATE ledger_accounts a SET balance = a.balance + s.total FROM s"
    " WHERE a.id = s.account_id RETURNING 1)"
    " SELECT count(*) FROM d"
)
