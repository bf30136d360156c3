"""Business day (营业日) in Asia/Shanghai with a configurable cutoff (日切).

With cutoff 23:00, a payment at 23:00:00 or later belongs to the next calendar day; with the
default 00:00 the business day is the calendar day in Beijing.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "SHANGHAI",
    "business_date",
    "day_bounds",
    "shanghai_today",
]

SHANGHAI = ZoneInfo("Asia/Shanghai")


def business_date(ts: datetime, cutoff: time = time(0, 0)) -> date:
    """The business day a timezone-aware instant belongs to."""
    if ts.tzinfo is None:
        raise ValueError("business_date needs a timezone-aware timestamp")
    local = ts.astimezone(SHANGHAI)
    day = local.date()
    if cutoff != time(0, 0) and local.time() >= cutoff:
        day += timedelta(days=1)
    return day


def day_bounds(day: date, cutoff: time = time(0, 0)) -> tuple[datetime, datetime]:
    """[start, end) of a business day as aware instants."""
    if cutoff == time(0, 0):
        start = datetime.combine(day, time(0, 0), SHANGHAI)
    else:
        start = datetime.combine(day - timedelta(days=1), cutoff, SHANGHAI)
    return start, start + timedelta(days=1)


def shanghai_today(now: datetime) -> date:
    if now.tzinfo is None:
        raise ValueError("aware datetime required")
    return now.astimezone(SHANGHAI).date()
