"""A card terminal at an agency counter, speaking the documented protocol (docs/channels/pos.md).

It plays the terminal's side only: the card and the acquirer are assumed to approve. It
keeps its own journal (batch, trace numbers, what it believes happened) as a real terminal
does, and settles its batch from that journal. Switches make it misbehave the ways real
terminals and networks do:

- `lose_answer`: the sale reaches the host, the answer never reaches the terminal; the
  terminal then reverses it (冲正), as the protocol requires.
- `reversal_first`: the reversal overtakes its sale (the sale was delayed on the way).
- `concurrent_reversal`: sale and reversal in flight at the same time.
- `duplicates`: the same sale sent again (same batch and trace, fresh signature).
- `replay`: the very same signed request sent again (same nonce) — a replay.
- `forge`: signed with a wrong key.

Given an acquirer (`acquirer_url`, the simulated one of `channels.pos.simulator_acquirer`),
the terminal books every card transaction there first, as a real terminal's authorisation
reaches its acquirer before the terminal tells us; a sale we refuse (13, 57, B1, B2, 12)
it reverses there at once — except a B2 with `"disposition": "REFUND"`: that sale was
recorded as a duplicate, and we give it back through the acquirer.

Used by the tests (in process, over real HTTP) and by `paygate simulator pos`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from channels.base import InvalidNotification
from channels.money import fen_to_yuan
from channels.pos import transforms as t

__all__ = [
    "JournalLine",
    "Sent",
    "SimTerminal",
    "TerminalState",
]


_TAKE_BACK = frozenset({"13", "57", "B1", "B2", "12"})
"""Our refusals of a sale: the terminal reverses the card sale (but not a B2 whose data
says the sale was recorded and is being given back: disposition REFUND)."""


@dataclass
class JournalLine:
    kind: str
    batch_no: str
    trace_no: str
    amount: int
    payment_code: str
    state: str
    """APPROVED, REVERSED, VOIDED, DECLINED (code)."""
    original_trace_no: str | None = None


@dataclass
class Sent:
    """One request and what came back (None: the answer was lost or discarded)."""

    operation: str
    request: dict[str, Any]
    status: int | None = None
    answer: dict[str, Any] | None = None
    signature_ok: bool | None = None


@dataclass
class TerminalState:
    batch_no: str = "000001"
    next_trace: int = 1
    journal: list[JournalLine] = field(default_factory=list)


class SimTerminal:
    def __init__(
        self,
        *,
        gateway_url: str,
        merchant: str,
        terminal: str,
        key: bytes,
        state: TerminalState | None = None,
        timeout_s: float = 30.0,
        acquirer_url: str | None = None,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.merchant = merchant
        self.terminal = terminal
        self.key = key
        self.state = state or TerminalState()
        self.acquirer_url = acquirer_url.rstrip("/") if acquirer_url else None
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ wire

    def _path(self, operation: str) -> str:
        return f"{httpx.URL(self.gateway_url).path.rstrip('/')}/v1/channels/pos/{operation}"

    def signed(
        self, operation: str, doc: dict[str, Any], *, forge: bool = False
    ) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        key = secrets.token_bytes(32) if forge else self.key
        headers = t.sign(key, "POST", self._path(operation), self.merchant, self.terminal, body)
        return body, headers | {"Content-Type": "application/json"}

    async def post_signed(
        self, operation: str, body: bytes, headers: dict[str, str], *, lose_answer: bool = False
    ) -> Sent:
        sent = Sent(operation, json.loads(body))
        resp = await self._client.post(
            f"{self.gateway_url}/v1/channels/pos/{operation}", content=body, headers=headers
        )
        if lose_answer:
            return sent  # the host answered; the terminal never heard it
        sent.status = resp.status_code
        sent.answer = resp.json()
        try:
            t.verify(self.key, "RESPONSE", self._path(operation), resp.headers, resp.content)
            sent.signature_ok = True
        except InvalidNotification:
            sent.signature_ok = False
        return sent

    async def send(
        self, operation: str, doc: dict[str, Any], *, forge: bool = False, lose_answer: bool = False
    ) -> Sent:
        body, headers = self.signed(operation, doc, forge=forge)
        return await self.post_signed(operation, body, headers, lose_answer=lose_answer)

    async def book(self, operation: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Tell the acquirer (card network side) about a card transaction; None without one."""
        if self.acquirer_url is None:
            return None
        ids = {"merchant_id": self.merchant, "terminal_id": self.terminal}
        resp = await self._client.post(f"{self.acquirer_url}/card/{operation}", json=ids | doc)
        answer: dict[str, Any] = resp.json()
        return answer

    # ------------------------------------------------------------------ operations

    def _trace(self) -> str:
        trace = f"{self.state.next_trace:06d}"
        self.state.next_trace = self.state.next_trace % 999_999 + 1
        return trace

    @staticmethod
    def _now() -> str:
        return t.format_time(datetime.now(UTC))

    async def inquiry(self, payment_code: str, **switches: Any) -> Sent:
        return await self.send("inquiry", {"payment_code": payment_code}, **switches)

    def sale_doc(self, payment_code: str, amount: int, trace_no: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "payment_code": payment_code,
            "amount": fen_to_yuan(amount),
            "currency": t.CURRENCY_CNY,
            "batch_no": self.state.batch_no,
            "trace_no": trace_no,
            "rrn": f"{secrets.randbelow(10**12):012d}",
            "card": f"622848******{secrets.randbelow(10**4):04d}",
            "card_type": "DEBIT",
            "acquirer": "01020000",
            "issuer": "01030000",
            "time": t.format_time(now),
            "settle_date": now.astimezone(t.SHANGHAI).strftime("%m%d"),
            "operator": "01",
        }

    def reversal_doc(self, sale: dict[str, Any]) -> dict[str, Any]:
        return {
            "batch_no": sale["batch_no"],
            "trace_no": sale["trace_no"],
            "amount": sale["amount"],
            "payment_code": sale["payment_code"],
            "time": self._now(),
        }

    async def sale(
        self,
        payment_code: str,
        amount: int,
        *,
        lose_answer: bool = False,
        reversal_first: bool = False,
        concurrent_reversal: bool = False,
        duplicates: int = 0,
        replay: bool = False,
        forge: bool = False,
    ) -> dict[str, Any]:
        """A card sale; returns every request sent and answer received, by step."""
        trace = self._trace()
        doc = self.sale_doc(payment_code, amount, trace)
        line = JournalLine("SALE", doc["batch_no"], trace, amount, payment_code, "PENDING")
        self.state.journal.append(line)
        out: dict[str, Any] = {"trace_no": trace, "batch_no": doc["batch_no"]}
        out["acquirer"] = await self.book("sale", doc)
        body, headers = self.signed("sale", doc, forge=forge)
        if reversal_first or concurrent_reversal or lose_answer:
            await self.book("reversal", doc)
        if reversal_first:
            out["reversal"] = asdict(await self.send("reversal", self.reversal_doc(doc)))
            out["sale"] = asdict(await self.post_signed("sale", body, headers))
            line.state = "REVERSED"
            return out
        if concurrent_reversal:
            s, r = await asyncio.gather(
                self.post_signed("sale", body, headers),
                self.send("reversal", self.reversal_doc(doc)),
            )
            out["sale"], out["reversal"] = asdict(s), asdict(r)
            line.state = "REVERSED"
            return out
        first = await self.post_signed("sale", body, headers, lose_answer=lose_answer)
        out["sale"] = asdict(first)
        if lose_answer:
            # No answer within the timeout: reverse, so no one-sided record remains.
            out["reversal"] = asdict(await self.send("reversal", self.reversal_doc(doc)))
            line.state = "REVERSED"
            return out
        if replay:
            out["replay"] = asdict(await self.post_signed("sale", body, headers))
        out["duplicates"] = [asdict(await self.send("sale", doc)) for _ in range(duplicates)]
        answer = first.answer or {}
        line.state = "APPROVED" if answer.get("code") == "00" else f"DECLINED {answer.get('code')}"
        given_back = (answer.get("data") or {}).get("disposition") == "REFUND"
        if answer.get("code") in _TAKE_BACK and not given_back:
            out["acquirer_reversal"] = await self.book("reversal", doc)
        return out

    def _find(self, trace_no: str, batch_no: str | None = None) -> JournalLine:
        for line in self.state.journal:
            if line.trace_no == trace_no and (batch_no is None or line.batch_no == batch_no):
                return line
        raise KeyError(f"no transaction {trace_no} in the journal")

    async def reverse(self, trace_no: str) -> Sent:
        """Reverse a sale of the journal by its trace number."""
        line = self._find(trace_no)
        sent = await self.send(
            "reversal",
            {
                "batch_no": line.batch_no,
                "trace_no": line.trace_no,
                "amount": fen_to_yuan(line.amount),
                "payment_code": line.payment_code,
                "time": self._now(),
            },
        )
        if (sent.answer or {}).get("code") == "00":
            line.state = "REVERSED"
            await self.book("reversal", {"batch_no": line.batch_no, "trace_no": line.trace_no})
        return sent

    async def void(self, trace_no: str, **switches: Any) -> Sent:
        """撤销 a sale of the current batch."""
        line = self._find(trace_no, self.state.batch_no)
        trace = self._trace()
        doc = {
            "batch_no": self.state.batch_no,
            "trace_no": trace,
            "original_trace_no": trace_no,
            "amount": fen_to_yuan(line.amount),
            "rrn": f"{secrets.randbelow(10**12):012d}",
            "time": self._now(),
            "operator": "01",
        }
        sent = await self.send("void", doc, **switches)
        if (sent.answer or {}).get("code") == "00":
            await self.book("void", doc)
            line.state = "VOIDED"
            self.state.journal.append(
                JournalLine(
                    "VOID",
                    self.state.batch_no,
                    trace,
                    line.amount,
                    line.payment_code,
                    "APPROVED",
                    trace_no,
                )
            )
        return sent

    async def refund(self, batch_no: str, trace_no: str, amount: int) -> Sent:
        """退货 (part of) a sale of a settled batch."""
        line = self._find(trace_no, batch_no)
        trace = self._trace()
        doc = {
            "batch_no": self.state.batch_no,
            "trace_no": trace,
            "original_batch_no": batch_no,
            "original_trace_no": trace_no,
            "amount": fen_to_yuan(amount),
            "rrn": f"{secrets.randbelow(10**12):012d}",
            "time": self._now(),
            "operator": "01",
        }
        booked = await self.book("refund", doc)
        if booked is not None and booked.get("code") != "00":
            return Sent("refund", doc, answer=booked)  # the acquirer gave nothing back
        sent = await self.send("refund", doc)
        if (sent.answer or {}).get("code") == "00":
            self.state.journal.append(
                JournalLine(
                    "REFUND",
                    self.state.batch_no,
                    trace,
                    amount,
                    line.payment_code,
                    "APPROVED",
                    trace_no,
                )
            )
        return sent

    def batch_lines(self) -> list[JournalLine]:
        """What the terminal counts in its batch: approved sales (voided ones too), voids,
        refunds; reversed sales never happened."""
        return [
            line
            for line in self.state.journal
            if line.batch_no == self.state.batch_no and line.state in {"APPROVED", "VOIDED"}
        ]

    async def settle(self, *, skip_traces: tuple[str, ...] = (), **switches: Any) -> Sent:
        """批结算 the current batch from the journal (`skip_traces`: lines the terminal
        lost, for a mismatch), then open the next batch."""
        lines = [x for x in self.batch_lines() if x.trace_no not in skip_traces]
        totals: dict[str, dict[str, Any]] = {}
        for kind in t.TOTAL_KINDS:
            mine = [x for x in lines if x.kind == kind]
            totals[kind.lower()] = {
                "count": len(mine),
                "amount": fen_to_yuan(sum(x.amount for x in mine)),
            }
        sent = await self.send(
            "settle",
            {
                "batch_no": self.state.batch_no,
                "totals": totals,
                "details": [
                    {"kind": x.kind, "trace_no": x.trace_no, "amount": fen_to_yuan(x.amount)}
                    for x in lines
                ],
            },
            **switches,
        )
        if (sent.answer or {}).get("code") in {"00", "95"}:
            self.state.batch_no = f"{int(self.state.batch_no) % 999_999 + 1:06d}"
        return sent

    # ------------------------------------------------------------------ persistence (CLI)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self.state), ensure_ascii=False, indent=1))

    @staticmethod
    def load(path: Path) -> TerminalState:
        if not path.exists():
            return TerminalState()
        doc = json.loads(path.read_text())
        return TerminalState(
            batch_no=doc["batch_no"],
            next_trace=doc["next_trace"],
            journal=[JournalLine(**x) for x in doc["journal"]],
        )
