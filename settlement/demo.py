"""Demo treasuries: one per budget level for the demo regions and every agency's region."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import Agency
from settlement.models import Treasury

__all__ = [
    "seed_treasuries",
]

DEMO_REGIONS = ("330100", "330106", "110105")
"""Hangzhou city, Hangzhou Xihu district, Beijing Chaoyang district (行政区划代码)."""


async def seed_treasuries(session: AsyncSession) -> int:
    """Idempotent: adds what is missing, never changes a configured treasury."""
    regions = set(DEMO_REGIONS) | set(await session.scalars(select(Agency.region_code)))
    rows = [
        {
            "region_code": region,
            "budget_level": level,
            "treasury_code": f"{region}{level:02d}",
            "finance_org_code": f"F{region}",
            "name": f"{region} 国库 (level {level})",
        }
        for region in sorted(regions)
        for level in range(1, 7)
    ]
    result = await session.execute(insert(Treasury).values(rows).on_conflict_do_nothing())
    return int(getattr(result, "rowcount", 0) or 0)
