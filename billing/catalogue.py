"""The revenue-item catalogue: validation, upsert, and realistic demo items.

Level splits are given in basis points per budget level 1–6 and must sum to exactly
10000 (100%), so the treasury split of any amount can neither lose nor invent a fen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import BUDGET_LEVELS, ITEM_CATEGORIES, RevenueItem
from kernel.errors import InvalidInput

__all__ = [
    "DEMO_ITEMS",
    "ItemSpec",
    "seed_demo_items",
    "upsert_item",
    "validate_item",
]

LATE_FEE_RULES = ("NONE", "FINE_DAILY_3PCT")
_SUBJECT = re.compile(r"^[0-9]{12}$")
_CODE = re.compile(r"^[0-9A-Za-z._-]{1,32}$")


@dataclass(frozen=True, slots=True)
class ItemSpec:
    code: str
    name: str
    category: str
    budget_subject: str
    split_bp: dict[int, int]
    fixed_amount: int | None = None
    min_amount: int | None = None
    max_amount: int | None = None
    late_fee_rule: str = "NONE"
    refundable: bool = True
    unit: str = "次"
    active_from: date = field(default_factory=lambda: date(2020, 1, 1))
    active_to: date | None = None


def validate_item(spec: ItemSpec) -> ItemSpec:
    def bad(msg: str, code: str) -> InvalidInput:
        return InvalidInput(msg, code=code, item_code=spec.code)

    if not _CODE.match(spec.code):
        raise bad("Item code: 1–32 letters, digits, '.', '_' or '-'.", "item_code_invalid")
    if spec.category not in ITEM_CATEGORIES:
        raise bad(f"Category must be one of {', '.join(ITEM_CATEGORIES)}.", "category_unknown")
    if not _SUBJECT.match(spec.budget_subject):
        raise bad("Budget subject code is 12 digits.", "budget_subject_invalid")
    if set(spec.split_bp) - set(BUDGET_LEVELS) or any(v < 0 for v in spec.split_bp.values()):
        raise bad("Split levels are 1–6 with non-negative shares.", "split_invalid")
    if sum(spec.split_bp.values()) != 10_000:
        raise bad("Level split must sum to exactly 100% (10000 bp).", "split_not_100_percent")
    if spec.fixed_amount is not None:
        if spec.fixed_amount <= 0 or spec.min_amount is not None or spec.max_amount is not None:
            raise bad("A fixed amount is positive and excludes min/max.", "amount_rule_invalid")
    elif (
        spec.min_amount is None
        or spec.max_amount is None
        or not 0 < spec.min_amount <= spec.max_amount
    ):
        raise bad("Give a fixed amount, or 0 < min ≤ max.", "amount_rule_invalid")
    if spec.late_fee_rule not in LATE_FEE_RULES:
        raise bad("Unknown late-fee rule.", "late_fee_rule_unknown")
    if spec.late_fee_rule != "NONE" and spec.category != "FINE":
        raise bad("Only fines carry a late-payment surcharge.", "late_fee_only_for_fines")
    if spec.active_to is not None and spec.active_to < spec.active_from:
        raise bad("Active period ends before it starts.", "active_period_invalid")
    return spec


async def upsert_item(session: AsyncSession, spec: ItemSpec) -> None:
    spec = validate_item(spec)
    values = {
        "code": spec.code,
        "name": spec.name,
        "category": spec.category,
        "unit": spec.unit,
        "budget_subject": spec.budget_subject,
        **{f"split_l{lvl}_bp": spec.split_bp.get(lvl, 0) for lvl in BUDGET_LEVELS},
        "fixed_amount": spec.fixed_amount,
        "min_amount": spec.min_amount,
        "max_amount": spec.max_amount,
        "late_fee_rule": spec.late_fee_rule,
        "refundable": spec.refundable,
        "active_from": spec.active_from,
        "active_to": spec.active_to,
    }
    stmt = insert(RevenueItem).values(**values)
    update = {k: stmt.excluded[k] for k in values if k != "code"}
    await session.execute(stmt.on_conflict_do_update(index_elements=["code"], set_=update))


DEMO_ITEMS: tuple[ItemSpec, ...] = (
    ItemSpec(
        code="FINE-ROAD-TRAFFIC",
        name="道路交通违法罚款",
        category="FINE",
        budget_subject="103050101001",
        split_bp={3: 10_000},
        min_amount=2_000,
        max_amount=200_000,
        late_fee_rule="FINE_DAILY_3PCT",
        refundable=True,
    ),
    ItemSpec(
        code="FINE-HIGHWAY",
        name="高速公路交通违法罚款",
        category="FINE",
        budget_subject="103050101001",
        split_bp={2: 10_000},
        min_amount=2_000,
        max_amount=200_000,
        late_fee_rule="FINE_DAILY_3PCT",
    ),
    ItemSpec(
        code="EXAM-CIVIL-SERVICE",
        name="公务员录用考试考务费",
        category="EXAM_FEE",
        budget_subject="103040100101",
        split_bp={2: 10_000},
        fixed_amount=10_000,
        unit="科",
        refundable=False,
    ),
    ItemSpec(
        code="EXAM-ACCT-JUNIOR",
        name="初级会计专业技术资格考试考务费",
        category="EXAM_FEE",
        budget_subject="103040100102",
        split_bp={2: 5_000, 3: 5_000},
        fixed_amount=6_000,
        unit="科",
        refundable=False,
    ),
    ItemSpec(
        code="EXAM-ACCT-SENIOR",
        name="高级会计专业技术资格考试考务费",
        category="EXAM_FEE",
        budget_subject="103040100102",
        split_bp={2: 5_000, 3: 5_000},
        fixed_amount=8_000,
        unit="科",
        refundable=False,
    ),
    ItemSpec(
        code="TUITION-UNIV-YEAR",
        name="普通高校学费（学年）",
        category="TUITION",
        budget_subject="103040200101",
        split_bp={2: 10_000},
        min_amount=300_000,
        max_amount=3_000_000,
        unit="学年",
    ),
    ItemSpec(
        code="SCHOOL-MISC",
        name="中小学服务性收费（代收费）",
        category="OTHER",
        budget_subject="103040200201",
        split_bp={4: 10_000},
        min_amount=100,
        max_amount=500_000,
        unit="学期",
    ),
)


async def seed_demo_items(session: AsyncSession) -> int:
    for spec in DEMO_ITEMS:
        await upsert_item(session, spec)
    return len(DEMO_ITEMS)
