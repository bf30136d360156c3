"""The card terminals' acquirer, simulated: what the terminals charged, our refunds through
its API, and its daily settlement file (docs/channels/pos.md, "The acquirer").

A plain ASGI app (no framework: it must not share code paths with the service it tests).
The simulated terminals (`channels.pos.simulator.SimTerminal` with an acquirer URL, and so
`paygate simulator pos --acquirer URL`) report every card transaction here first, as a
real terminal's authorisation reaches its acquirer before the terminal tells us:

    POST /card/sale      {"merchant_id", "terminal_id", "batch_no", "trace_no", "rrn",
                          "card", "amount", "time"}
    POST /card/reversal  {"terminal_id", "batch_no", "trace_no"}
    POST /card/void      {"terminal_id", "batch_no", "original_trace_no"}
    POST /card/refund    {"merchant_id", "terminal_id", "batch_no", "trace_no", "rrn",
                          "original_batch_no", "original_trace_no", "amount", "time"}

The acquirer API we call (signed, `channels.pos.adapter.acquirer_scheme`):

    POST /acquirer/refund        {"refund_id", "reference", "amount", "reason"}
    POST /acquirer/refund_query  {"refund_id"}
    POST /acquirer/statement     {"date"}   → the settlement file of that day

Control (unsigned; the test or the operator):

    GET  /control/state                 → sales, refunds, switches
    POST /control/faults   {"forge", "lose", "refuse", "busy"}   counts of API answers to
        spoil: `forge` answers success signed with a wrong key and does nothing; `lose`
        does the refund and loses the answer (HTTP 504); `refuse` refuses it ("51");
        `busy` answers "96" (system error) and does nothing
    POST /control/statement {"omit": [ref…], "extra": [row…], "amount_delta": {ref: fen},
        "settle_reversed": [ref…], "fee_bp": n}   what the next settlement files get wrong
        (a ref is terminal id + batch + trace; an extra row is a SettlementRow's fields
        with amounts in fen and time as `yyyy-MM-dd HH:mm:ss`)
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from channels.money import fen_to_yuan, yuan_to_fen
from channels.pos import transforms as t
from channels.pos.adapter import SettlementRow, acquirer_scheme, render_settlement_file
from channels.sim_asgi import Receive, Scope, Send, lifespan, read_request, respond

__all__ = ["CardTxn", "SimAcquirer", "SimRefund", "create_app"]

Answer = tuple[int, bytes, dict[str, str]]


@dataclass
class CardTxn:
    """A card sale or a terminal refund (退货) as the acquirer booked it."""

    kind: str
    merchant_id: str
    terminal_id: str
    batch_no: str
    trace_no: str
    rrn: str
    card: str
    amount: int
    time: str
    state: str = "APPROVED"
    """APPROVED, VOIDED or REVERSED."""
    original_batch_no: str = ""
    original_trace_no: str = ""

    @property
    def ref(self) -> str:
        return t.trade_no(self.terminal_id, self.batch_no, self.trace_no)


@dataclass
class SimRefund:
    """A refund we asked for through the API."""

    refund_id: str
    reference: str
    amount: int
    rrn: str
    refunded_at: str
    state: str = "SUCCESS"


@dataclass
class Switches:
    forge: int = 0
    lose: int = 0
    refuse: int = 0
    busy: int = 0
    omit: list[str] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    amount_delta: dict[str, int] = field(default_factory=dict)
    settle_reversed: list[str] = field(default_factory=list)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _day(time_text: str) -> date:
    return t.parse_time(time_text).date()  # Beijing time: the acquirer's settlement day


class SimAcquirer:
    def __init__(self, secret: bytes, *, fee_bp: int = 38) -> None:
        self.scheme = acquirer_scheme(secret)
        self.fee_bp = fee_bp
        """The acquirer's rate on a sale (0.38% by default), rounded half up to the fen;
        a refund gives no fee back."""
        self.sales: dict[str, CardTxn] = {}
        self.terminal_refunds: list[CardTxn] = []
        self.refunds: dict[str, SimRefund] = {}
        self.switches = Switches()
        self.seen_nonces: set[str] = set()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        headers, body = await read_request(scope, receive)
        status, out, extra = self.handle(scope["method"], scope["path"], headers, body)
        await respond(send, status, out, extra)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        parts = path.strip("/").split("/")
        if path == "/health/live":
            return 200, b'{"status":"ok"}', {}
        try:
            req: dict[str, Any] = json.loads(body) if body else {}
        except ValueError:
            return 400, b'{"error":"not JSON"}', {}
        if len(parts) == 2 and parts[0] == "card" and method == "POST":
            return self._card(parts[1], req)
        if len(parts) == 2 and parts[0] == "acquirer" and method == "POST":
            return self._acquirer(parts[1], headers, body, req)
        if parts[0] == "control":
            return self._control(method, parts[1:], req)
        return 404, b'{"error":"not found"}', {}

    # ------------------------------------------------------------------ the terminals' side

    def _card(self, operation: str, req: dict[str, Any]) -> Answer:  # noqa: PLR0911 - per answer
        def done(code: str, msg: str) -> Answer:
            return 200, _json({"code": code, "msg": msg}), {}

        if operation == "sale":
            sale = CardTxn(
                kind="SALE",
                merchant_id=str(req["merchant_id"]),
                terminal_id=str(req["terminal_id"]),
                batch_no=str(req["batch_no"]),
                trace_no=str(req["trace_no"]),
                rrn=str(req["rrn"]),
                card=str(req["card"]),
                amount=yuan_to_fen(str(req["amount"])),
                time=str(req["time"]),
            )
            self.sales.setdefault(sale.ref, sale)
            return done("00", "approved")
        ref = t.trade_no(
            str(req.get("terminal_id")),
            str(req.get("batch_no")),
            str(req.get("original_trace_no") or req.get("trace_no")),
        )
        if operation in {"reversal", "void"}:
            booked = self.sales.get(ref)
            if booked is None:
                return done("25", "no such sale")
            if self._refunded(ref):
                return done("12", "refunded: cannot be taken back")
            booked.state = "REVERSED" if operation == "reversal" else "VOIDED"
            return done("00", "approved")
        if operation == "refund":
            original = t.trade_no(
                str(req["terminal_id"]),
                str(req["original_batch_no"]),
                str(req["original_trace_no"]),
            )
            given = self.sales.get(original)
            amount = yuan_to_fen(str(req["amount"]))
            if given is None or given.state != "APPROVED":
                return done("25", "no such sale")
            if self._refunded(original) + amount > given.amount:
                return done("13", "more than the sale has left")
            self.terminal_refunds.append(
                CardTxn(
                    kind="REFUND",
                    merchant_id=given.merchant_id,
                    terminal_id=str(req["terminal_id"]),
                    batch_no=str(req["batch_no"]),
                    trace_no=str(req["trace_no"]),
                    rrn=str(req["rrn"]),
                    card=given.card,
                    amount=amount,
                    time=str(req["time"]),
                    original_batch_no=given.batch_no,
                    original_trace_no=given.trace_no,
                )
            )
            return done("00", "approved")
        return done("30", "unknown operation")

    def _refunded(self, ref: str) -> int:
        online = sum(r.amount for r in self.refunds.values() if r.reference == ref)
        sale = self.sales.get(ref)
        at_terminal = sum(
            x.amount
            for x in self.terminal_refunds
            if sale is not None
            and (x.terminal_id, x.original_batch_no, x.original_trace_no)
            == (sale.terminal_id, sale.batch_no, sale.trace_no)
        )
        return online + at_terminal

    # ------------------------------------------------------------------ the API we call

    def _signed(self, operation: str, out: bytes, *, forged: bool = False) -> dict[str, str]:
        headers = self.scheme.headers(
            f"RESPONSE:{operation}", out, secret=secrets.token_bytes(32) if forged else None
        )
        headers.pop("Content-Type", None)
        return headers

    def _acquirer(  # noqa: PLR0911, PLR0912 - one answer per operation and failure
        self, operation: str, headers: dict[str, str], body: bytes, req: dict[str, Any]
    ) -> Answer:
        def answer(code: str, msg: str, data: Any = None, *, forged: bool = False) -> Answer:
            out = _json({"code": code, "msg": msg, "data": data})
            return 200, out, self._signed(operation, out, forged=forged)

        nonce = headers.get("x-acq-nonce", "")
        if not self.scheme.verify(operation, headers, body) or nonce in self.seen_nonces:
            return answer("A0", "signature check failed")
        self.seen_nonces.add(nonce)
        if operation == "statement":
            out = self.settlement_file(date.fromisoformat(str(req["date"])))
            return 200, out, self._signed(operation, out) | {"content-type": "text/plain"}
        if operation == "refund_query":
            found = self.refunds.get(str(req.get("refund_id")))
            if found is None:
                return answer("25", "no such refund")
            return answer("00", "ok", self._refund_doc(found))
        if operation != "refund":
            return answer("30", "unknown operation")
        sw = self.switches
        if sw.forge:
            sw.forge -= 1
            fake = {"state": "SUCCESS", "amount": req.get("amount"), "refunded_at": None}
            return answer("00", "ok", fake, forged=True)
        if sw.busy:
            sw.busy -= 1
            return answer("96", "system busy")
        if sw.refuse:
            sw.refuse -= 1
            return answer("51", "merchant balance cannot cover the refund")
        refund_id = str(req["refund_id"])
        if refund_id not in self.refunds:  # idempotent by our refund id
            reference = str(req.get("reference"))
            sale = self.sales.get(reference)
            amount = yuan_to_fen(str(req["amount"]))
            if sale is None:
                return answer("25", "no such sale")
            if sale.state != "APPROVED":
                return answer("12", f"the sale was {sale.state.lower()}")
            if self._refunded(reference) + amount > sale.amount:
                return answer("13", "more than the sale has left")
            self.refunds[refund_id] = SimRefund(
                refund_id=refund_id,
                reference=reference,
                amount=amount,
                rrn=f"{secrets.randbelow(10**12):012d}",
                refunded_at=t.format_time(datetime.now(UTC)),
            )
        if sw.lose:
            sw.lose -= 1
            return 504, b'{"error":"gateway time-out"}', {}
        return answer("00", "ok", self._refund_doc(self.refunds[refund_id]))

    @staticmethod
    def _refund_doc(r: SimRefund) -> dict[str, Any]:
        return {
            "state": r.state,
            "amount": fen_to_yuan(r.amount),
            "refunded_at": r.refunded_at,
            "rrn": r.rrn,
        }

    def fee(self, amount: int) -> int:
        return (amount * self.fee_bp + 5000) // 10000

    def rows(self, day: date) -> list[SettlementRow]:
        """The day's lines: approved sales (with the acquirer's fee), voided ones flagged,
        reversed ones absent; terminal refunds and ours (no fee back)."""
        sw = self.switches
        rows: list[SettlementRow] = []
        for s in self.sales.values():
            if _day(s.time) != day or s.ref in sw.omit:
                continue
            if s.state == "REVERSED" and s.ref not in sw.settle_reversed:
                continue
            kind = "VOID" if s.state == "VOIDED" and s.ref not in sw.settle_reversed else "SALE"
            amount = s.amount + sw.amount_delta.get(s.ref, 0)
            rows.append(
                SettlementRow(
                    merchant_id=s.merchant_id,
                    terminal_id=s.terminal_id,
                    batch_no=s.batch_no,
                    trace_no=s.trace_no,
                    rrn=s.rrn,
                    card=s.card,
                    kind=kind,
                    amount=amount,
                    fee=self.fee(amount) if kind == "SALE" else 0,
                    time=t.parse_time(s.time),
                    original_batch_no=s.batch_no if kind == "VOID" else "",
                    original_trace_no=s.trace_no if kind == "VOID" else "",
                )
            )
        for x in self.terminal_refunds:
            if _day(x.time) == day and x.ref not in sw.omit:
                rows.append(
                    SettlementRow(
                        merchant_id=x.merchant_id,
                        terminal_id=x.terminal_id,
                        batch_no=x.batch_no,
                        trace_no=x.trace_no,
                        rrn=x.rrn,
                        card=x.card,
                        kind="REFUND",
                        amount=-x.amount,
                        fee=0,
                        time=t.parse_time(x.time),
                        original_batch_no=x.original_batch_no,
                        original_trace_no=x.original_trace_no,
                    )
                )
        for r in self.refunds.values():
            sale = self.sales.get(r.reference)
            if sale is None or _day(r.refunded_at) != day or r.refund_id in sw.omit:
                continue
            rows.append(
                SettlementRow(
                    merchant_id=sale.merchant_id,
                    terminal_id=sale.terminal_id,
                    batch_no=sale.batch_no,
                    trace_no="000000",
                    rrn=r.rrn,
                    card=sale.card,
                    kind="REFUND",
                    amount=-r.amount,
                    fee=0,
                    time=t.parse_time(r.refunded_at),
                    refund_id=r.refund_id,
                    original_batch_no=sale.batch_no,
                    original_trace_no=sale.trace_no,
                )
            )
        for e in sw.extra:
            rows.append(SettlementRow(**{**e, "time": t.parse_time(str(e["time"]))}))
        return rows

    def settlement_file(self, day: date) -> bytes:
        return render_settlement_file(day, self.rows(day))

    # ------------------------------------------------------------------ control

    def _control(self, method: str, parts: list[str], req: dict[str, Any]) -> Answer:
        if parts == ["state"] and method == "GET":
            return 200, _json(self.state()), {}
        if parts == ["faults"] and method == "POST":
            for name in ("forge", "lose", "refuse", "busy"):
                setattr(self.switches, name, int(req.get(name, 0)))
            return 200, _json(self.state()["switches"]), {}
        if parts == ["statement"] and method == "POST":
            sw = self.switches
            sw.omit = [str(x) for x in req.get("omit", [])]
            sw.extra = list(req.get("extra", []))
            sw.amount_delta = {str(k): int(v) for k, v in dict(req.get("amount_delta", {})).items()}
            sw.settle_reversed = [str(x) for x in req.get("settle_reversed", [])]
            if "fee_bp" in req:
                self.fee_bp = int(req["fee_bp"])
            return 200, _json(self.state()["switches"]), {}
        return 404, b'{"error":"not found"}', {}

    def state(self) -> dict[str, Any]:
        return {
            "sales": [asdict(s) | {"ref": s.ref} for s in self.sales.values()],
            "terminal_refunds": [asdict(x) for x in self.terminal_refunds],
            "refunds": [asdict(r) for r in self.refunds.values()],
            "switches": asdict(self.switches) | {"fee_bp": self.fee_bp},
        }


def create_app(secret: bytes | None = None, *, fee_bp: int = 38) -> SimAcquirer:
    key = secret or os.environ.get("PAYGATE_POS_ACQUIRER_SECRET", "").encode()
    if not key:
        raise ValueError("the simulated acquirer needs PAYGATE_POS_ACQUIRER_SECRET")
    return SimAcquirer(key, fee_bp=fee_bp)
