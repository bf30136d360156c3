"""A channel's day-end account check (日终对账): its list of the day's confirmations
against the ones it sent us during the day.

The channel sends, once per business day, every confirmation it believes it made that day
(its reference and amount). Each is compared with the receipts its intraday confirmations
left (that channel, that business day, reversed ones excluded): a line whose amounts
differ, one we have and the list lacks, one the list has and we never received. The list
is kept with what was found; a second list for the same day is refused and changes
nothing. Nothing is paid or refunded here: money the channel took without telling us is
reconciliation's to act on (settlement.reconcile), with the channel's statement file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import structlog
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT, VARCHAR, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.base import CheckedPayment, Finding, FindingKind
from payments.models import DayCheck

__all__ = ["DayCheckResult", "DuplicateLine", "check_day"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DayCheckResult:
    sent_twice: bool
    mismatches: tuple[Finding, ...] = ()
    lines: int = 0
    total: int = 0

    @property
    def matched(self) -> bool:
        return not self.sent_twice and not self.mismatches


class DuplicateLine(ValueError):
    """The list names one reference twice: a malformed list, refused whole."""


_COMPARE = text(
    "WITH theirs AS (SELECT * FROM unnest(:refs, :amounts) AS t(ref, amount)),"
    " ours AS (SELECT channel_trade_no AS ref, amount FROM receipts"
    " WHERE channel = :channel AND business_date = :day AND kind IN ('PAYMENT', 'DUPLICATE')"
    " AND channel_trade_no IS NOT NULL)"
    " SELECT coalesce(o.ref, t.ref) AS ref, o.amount AS ours, t.amount AS theirs"
    " FROM ours AS o FULL JOIN theirs AS t ON t.ref = o.ref"
    " WHERE o.amount IS DISTINCT FROM t.amount ORDER BY 1"
).bindparams(
    bindparam("refs", type_=ARRAY(VARCHAR)),
    bindparam("amounts", type_=ARRAY(BIGINT)),
)
"""Set-based: the channel's list and the day's receipts in one full join."""


def _kind(ours: int | None, theirs: int | None) -> FindingKind:
    if ours is None:
        return FindingKind.MISSING_INTRADAY
    if theirs is None:
        return FindingKind.MISSING_AT_DAY_END
    return FindingKind.AMOUNT_DIFFERS


async def check_day(
    sessions: async_sessionmaker[AsyncSession],
    *,
    channel: str,
    day: date,
    lines: Sequence[CheckedPayment],
    raw: bytes,
) -> DayCheckResult:
    """Compare and record the channel's day-end list (`raw`: its bytes, for the record)."""
    refs = [line.reference for line in lines]
    if len(set(refs)) != len(refs):
        raise DuplicateLine("a reference appears twice in the day-end list")
    total = sum(line.amount for line in lines)
    bound = log.bind(channel=channel, day=day.isoformat())
    async with sessions() as s, s.begin():
        rows = (
            await s.execute(
                _COMPARE,
                {
                    "refs": refs,
                    "amounts": [line.amount for line in lines],
                    "channel": channel,
                    "day": day,
                },
            )
        ).all()
        mismatches = tuple(Finding(r.ref, _kind(r.ours, r.theirs), r.ours, r.theirs) for r in rows)
        recorded = await s.scalar(
            insert(DayCheck)
            .values(
                channel=channel,
                business_date=day,
                content_hash=hashlib.sha256(raw).digest(),
                line_count=len(lines),
                total=total,
                mismatches=[
                    {
                        "reference": m.reference,
                        "finding": m.kind,
                        "ours": m.ours,
                        "theirs": m.theirs,
                    }
                    for m in mismatches
                ],
            )
            .on_conflict_do_nothing(index_elements=["channel", "business_date"])
            .returning(DayCheck.id)
        )
        if recorded is None:
            bound.warning("day-end check sent twice; refused")
            return DayCheckResult(sent_twice=True)
    if mismatches:
        bound.warning("day-end check differs", mismatches=len(mismatches))
    else:
        bound.info("day-end check matches", lines=len(lines))
    return DayCheckResult(False, mismatches, len(lines), total)
