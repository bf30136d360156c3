"""A bank that speaks the interface of docs/channels/bank.md, for tests, benches and the demo.

A plain ASGI app (no framework: it must not share code paths with the service it tests).
Each configured bank lives under `/banks/<code>/…` and answers our signed calls:

    POST /banks/<code>/payments/query   {"order_id"}               → state of that order
    POST /banks/<code>/payments/close   {"order_id"}               → void an unpaid order
    POST /banks/<code>/refunds          {"refund_id", "order_id", "bank_serial", "amount"}
    POST /banks/<code>/refunds/query    {"refund_id"}
    POST /banks/<code>/statements       {"date"}                   → CSV day-end file

Control API (unsigned, for the test or the demo playing a customer at the bank):

    POST /control/<code>/pay  {"payment_code", "gateway_url", "pay_mode", "drop_confirm",
                               "lose_answer", "duplicates", "bad_signature", "amount_delta",
                               "skip_query", "amount", "order_id", "as_bank", "version"}
        The bank queries the gateway, takes the money, then confirms (signed) — unless
        `drop_confirm` (a lost confirmation the gateway must find by querying us).
        `pay_mode`: app (default), web, counter, ecny. `lose_answer`: the confirmation
        reaches the gateway but its answer is lost (the bank learns nothing).
        `duplicates`: send it n more times. `bad_signature`: forged. `version`: sent as is.
        `skip_query` (with `amount`): no query first; with `order_id` too, the bank debits
        again under an order it used before (a second debit for one order).
    POST /control/<code>/reverse  {"gateway_url", "bank_serial", "amount_delta", "reason"}
        The teller's transaction failed after confirming: reverse (冲正) it.
    POST /control/<code>/daycheck {"gateway_url", "date", "only", "drop", "extra",
                                   "amount_delta", "twice"}
        The day-end account check (日终对账): every confirmed order of the day (or `only`
        these serials), with the test's changes — `drop` these serials, add `extra` lines,
        change amounts by `amount_delta` {serial: fen}; `twice` sends it a second time.
    GET  /control/<code>/state → orders and refunds this bank holds.

Each bank signs as registered with us: HMAC-SHA256 with the shared secret, or SM2 with
SM3 with its own private key, verifying our answers with our public key for it.

Run: `paygate simulator bank` with `PAYGATE_BANK_SIM="102=<secret>,105=sm2:<bank private
key hex>:<our public key hex>"`.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import httpx

from channels.bank import transforms as t
from channels.bank.signing import HmacSigning, Signing, Sm2Signing, as_signing
from channels.base import InvalidNotification
from channels.money import fen_to_yuan, yuan_to_fen
from channels.sim_asgi import Receive, Scope, Send, lifespan, read_request, respond
from kernel.sm2 import PrivateKey, PublicKey


@dataclass
class Order:
    order_id: str
    payment_code: str
    amount: int
    state: str = "WAITING"
    bank_serial: str | None = None
    paid_at: str | None = None
    pay_mode: str | None = None


@dataclass
class SimRefund:
    refund_id: str
    order_id: str
    bank_serial: str | None
    amount: int
    state: str
    refunded_at: str


@dataclass
class Bank:
    code: str
    signing: Signing
    orders: dict[str, Order] = field(default_factory=dict)
    by_serial: dict[str, Order] = field(default_factory=dict)
    refunds: dict[str, SimRefund] = field(default_factory=dict)
    seen_nonces: set[str] = field(default_factory=set)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class BankSimulator:
    def __init__(self, banks: dict[str, bytes | Signing]) -> None:
        self.banks = {code: Bank(code, as_signing(key)) for code, key in banks.items()}
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        return self._client

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, on_shutdown=self._close_client)
            return
        headers, body = await read_request(scope, receive)
        status, out, extra = await self.handle(scope["method"], scope["path"], headers, body)
        await respond(send, status, out, extra)

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        parts = path.strip("/").split("/")
        if path == "/health/live":
            return 200, b'{"status":"ok"}', {}
        if len(parts) >= 3 and parts[0] in {"banks", "control"} and parts[1] in self.banks:
            bank = self.banks[parts[1]]
            rest = "/" + "/".join(parts[2:])
            if parts[0] == "control":
                return await self._control(bank, method, rest, body)
            return self._bank_api(bank, path, rest, headers, body)
        return 404, b'{"error":"not found"}', {}

    # ------------------------------------------------------------------ our calls to the bank

    def _bank_api(  # noqa: PLR0911 - one answer per operation and failure, like the bank
        self, bank: Bank, path: str, rest: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        def answer(code: str, msg: str, data: Any = None) -> tuple[int, bytes, dict[str, str]]:
            out = _json({"code": code, "msg": msg, "data": data})
            return 200, out, t.sign(bank.signing, "RESPONSE", path, out, bank.code)

        try:
            verified = t.verify(bank.signing, bank.code, "POST", path, headers, body)
        except InvalidNotification as exc:
            return answer(t.ResultCode.BAD_SIGNATURE, str(exc))
        if verified.nonce in bank.seen_nonces:
            return answer(t.ResultCode.BAD_SIGNATURE, "nonce reused")
        bank.seen_nonces.add(verified.nonce)
        req = json.loads(body)
        if rest == "/payments/query":
            order = bank.orders.get(req.get("order_id", "")) or bank.by_serial.get(
                req.get("bank_serial", "")
            )
            if order is None:
                return answer(t.ResultCode.ORDER_NOT_FOUND, "no such order")
            return answer(t.ResultCode.OK, "ok", self._order_doc(order))
        if rest == "/payments/close":
            order = bank.orders.get(req.get("order_id", ""))
            if order is None:
                return answer(t.ResultCode.ORDER_NOT_FOUND, "no such order")
            if order.state == "SUCCESS":
                return answer(t.ResultCode.ORDER_PAID, "order already paid")
            order.state = "CLOSED"
            return answer(t.ResultCode.OK, "ok", self._order_doc(order))
        if rest == "/refunds":
            return self._refund(bank, req, answer)
        if rest == "/refunds/query":
            refund = bank.refunds.get(req.get("refund_id", ""))
            if refund is None:
                return answer(t.ResultCode.ORDER_NOT_FOUND, "no such refund")
            return answer(t.ResultCode.OK, "ok", self._refund_doc(refund))
        if rest == "/statements":
            day = date.fromisoformat(req["date"])
            csv = t.statement_csv(self._statement_rows(bank, day))
            hdrs = t.sign(bank.signing, "RESPONSE", path, csv, bank.code)
            hdrs["Content-Type"] = "text/csv; charset=utf-8"
            return 200, csv, hdrs
        return answer(t.ResultCode.BAD_REQUEST, "unknown operation")

    def _refund(
        self,
        bank: Bank,
        req: dict[str, Any],
        answer: Callable[[str, str, Any], tuple[int, bytes, dict[str, str]]],
    ) -> tuple[int, bytes, dict[str, str]]:
        existing = bank.refunds.get(req["refund_id"])
        if existing is not None:  # the idempotency key: a retry changes nothing
            return answer(t.ResultCode.OK, "ok", self._refund_doc(existing))
        order = bank.orders.get(req.get("order_id") or "") or bank.by_serial.get(
            req.get("bank_serial") or ""
        )
        if order is None or order.state != "SUCCESS":
            return answer(t.ResultCode.ORDER_NOT_FOUND, "no paid order to refund", None)
        amount = yuan_to_fen(req["amount"])
        done = sum(r.amount for r in bank.refunds.values() if r.order_id == order.order_id)
        if amount + done > order.amount:
            return answer(t.ResultCode.REFUND_EXCEEDS, "refund exceeds the payment", None)
        refund = SimRefund(
            refund_id=req["refund_id"],
            order_id=order.order_id,
            bank_serial=order.bank_serial,
            amount=amount,
            state="SUCCESS",
            refunded_at=t.format_time(datetime.now(UTC)),
        )
        bank.refunds[refund.refund_id] = refund
        return answer(t.ResultCode.OK, "ok", self._refund_doc(refund))

    @staticmethod
    def _order_doc(order: Order) -> dict[str, Any]:
        return {
            "order_id": order.order_id,
            "bank_serial": order.bank_serial,
            "state": order.state,
            "amount": fen_to_yuan(order.amount),
            "paid_at": order.paid_at,
            "pay_mode": order.pay_mode,
        }

    @staticmethod
    def _refund_doc(refund: SimRefund) -> dict[str, Any]:
        return {
            "refund_id": refund.refund_id,
            "state": refund.state,
            "amount": fen_to_yuan(refund.amount),
            "refunded_at": refund.refunded_at,
        }

    @staticmethod
    def _paid_on(bank: Bank, day: date) -> list[Order]:
        return [
            o
            # Every debit, a second one under an order already paid included (by serial).
            for o in bank.by_serial.values()
            if o.state == "SUCCESS" and o.paid_at and t.parse_time(o.paid_at).date() == day
        ]

    def _statement_rows(self, bank: Bank, day: date) -> list[dict[str, str]]:
        rows = [
            {
                "bank_serial": o.bank_serial or "",
                "order_id": o.order_id,
                "kind": "PAYMENT",
                "amount": fen_to_yuan(o.amount),
                "fee": "0.00",
                "time": o.paid_at or "",
                "payment_code": o.payment_code,
            }
            for o in self._paid_on(bank, day)
        ]
        rows += [
            {
                "bank_serial": r.bank_serial or "",
                "order_id": r.order_id,
                "kind": "REFUND",
                "amount": fen_to_yuan(-r.amount),
                "fee": "0.00",
                "time": r.refunded_at,
                "refund_id": r.refund_id,
            }
            for r in bank.refunds.values()
            if t.parse_time(r.refunded_at).date() == day
        ]
        return rows

    # ------------------------------------------------------------------ a customer at the bank

    async def _control(
        self, bank: Bank, method: str, rest: str, body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        if rest == "/state" and method == "GET":
            return (
                200,
                _json(
                    {
                        "orders": [asdict(o) for o in bank.orders.values()],
                        "refunds": [asdict(r) for r in bank.refunds.values()],
                    }
                ),
                {},
            )
        if rest == "/pay" and method == "POST":
            return 200, _json(await self.customer_pays(bank, json.loads(body))), {}
        if rest == "/reverse" and method == "POST":
            return 200, _json(await self.teller_reverses(bank, json.loads(body))), {}
        if rest == "/daycheck" and method == "POST":
            return 200, _json(await self.day_end_check(bank, json.loads(body))), {}
        return 404, b'{"error":"not found"}', {}

    async def _to_gateway(
        self,
        bank: Bank,
        gateway_url: str,
        op: str,
        payload: dict[str, Any],
        *,
        bad_signature: bool = False,
        as_bank: str | None = None,
        lose_answer: bool = False,
    ) -> dict[str, Any]:
        code = as_bank or bank.code
        path = f"/v1/channels/bank/{code}/{op}"
        body = _json(payload)
        key = HmacSigning(secrets.token_bytes(32)) if bad_signature else bank.signing
        headers = t.sign(key, "POST", path, body, code)
        resp = await self.client.post(gateway_url.rstrip("/") + path, content=body, headers=headers)
        if lose_answer:  # it reached the gateway; the answer never reached the bank
            return {"lost": True}
        doc: dict[str, Any] = resp.json()
        doc["http_status"] = resp.status_code
        if resp.status_code == 200:
            # A bank trusts only answers signed by the platform with the shared secret.
            try:
                t.verify(bank.signing, code, "RESPONSE", path, resp.headers, resp.content)
                doc["signature_ok"] = True
            except InvalidNotification:
                doc["signature_ok"] = False
        return doc

    async def customer_pays(self, bank: Bank, req: dict[str, Any]) -> dict[str, Any]:
        gw = str(req["gateway_url"])
        code = str(req["payment_code"])
        result: dict[str, Any] = {}
        order_id: str | None = req.get("order_id")  # with skip_query: an order used before
        amount: int | None = req.get("amount")
        if not req.get("skip_query"):
            query = await self._to_gateway(bank, gw, "query", {"payment_code": code})
            result["query"] = query
            if query.get("code") != t.ResultCode.OK or not query.get("signature_ok"):
                return result  # the bank will not take money for a bill it cannot pay
            order_id = query["data"]["order_id"]
            amount = yuan_to_fen(query["data"]["amount"])
        if amount is None:
            raise ValueError("skip_query needs an amount")
        amount += int(req.get("amount_delta", 0))
        serial = f"{bank.code}{datetime.now(UTC):%Y%m%d}{secrets.token_hex(6).upper()}"
        order = Order(
            order_id=order_id or f"bank-{serial}",
            payment_code=code,
            amount=amount,
            state="SUCCESS",  # the customer's account is debited
            bank_serial=serial,
            paid_at=t.format_time(datetime.now(UTC)),
            pay_mode=str(req.get("pay_mode", "app")),
        )
        if req.get("order_id"):  # a second debit under an order: the order keeps its first
            bank.orders.setdefault(order.order_id, order)
        else:
            bank.orders[order.order_id] = order
        bank.by_serial[serial] = order
        result.update(order_id=order_id, bank_serial=serial, amount=fen_to_yuan(amount))
        if req.get("drop_confirm"):
            result["confirms"] = []
            return result
        confirm = {
            "payment_code": code,
            "order_id": order_id,
            "bank_serial": serial,
            "amount": fen_to_yuan(amount),
            "paid_at": order.paid_at,
            "pay_mode": order.pay_mode,
        }
        if "version" in req:
            confirm["version"] = req["version"]
        result["confirms"] = [
            await self._to_gateway(
                bank,
                gw,
                "confirm",
                confirm,
                bad_signature=bool(req.get("bad_signature")),
                as_bank=req.get("as_bank"),
                lose_answer=bool(req.get("lose_answer")) and i == 0,
            )
            for i in range(1 + int(req.get("duplicates", 0)))
        ]
        return result

    async def teller_reverses(self, bank: Bank, req: dict[str, Any]) -> dict[str, Any]:
        """The teller's transaction failed after the bank confirmed: reverse it (冲正)."""
        order = bank.by_serial.get(str(req["bank_serial"]))
        if order is None:
            return {"error": "no such serial at this bank"}
        doc = {
            "payment_code": order.payment_code,
            "bank_serial": order.bank_serial,
            "amount": fen_to_yuan(order.amount + int(req.get("amount_delta", 0))),
            "reason": str(req.get("reason", "teller transaction failed")),
        }
        answer = await self._to_gateway(bank, str(req["gateway_url"]), "reverse", doc)
        if answer.get("code") == t.ResultCode.OK and answer.get("signature_ok"):
            order.state = "REVERSED"  # the customer's debit is undone
        return answer

    async def day_end_check(self, bank: Bank, req: dict[str, Any]) -> dict[str, Any]:
        """Send the day's confirmed payments (日终对账), changed as the test asks."""
        day = date.fromisoformat(str(req.get("date") or datetime.now(t.SHANGHAI).date()))
        drop = set(req.get("drop", []))
        only = set(req["only"]) if "only" in req else None
        delta = {str(k): int(v) for k, v in dict(req.get("amount_delta", {})).items()}
        lines = [
            {
                "bank_serial": o.bank_serial,
                "amount": fen_to_yuan(o.amount + delta.get(o.bank_serial or "", 0)),
            }
            for o in self._paid_on(bank, day)
            if o.bank_serial not in drop and (only is None or o.bank_serial in only)
        ]
        lines += [dict(extra) for extra in req.get("extra", [])]
        doc = {
            "date": day.isoformat(),
            "count": len(lines),
            "total": fen_to_yuan(sum(yuan_to_fen(str(li["amount"])) for li in lines)),
            "payments": lines,
        }
        gw = str(req["gateway_url"])
        answers = [await self._to_gateway(bank, gw, "daycheck", doc)]
        if req.get("twice"):
            answers.append(await self._to_gateway(bank, gw, "daycheck", doc))
        return {"sent": doc, "answers": answers}


def banks_from_env(raw: str | None = None) -> dict[str, bytes | Signing]:
    """`102=<secret>` (HMAC) or `105=sm2:<bank private key hex>:<our public key hex>`."""
    raw = os.environ.get("PAYGATE_BANK_SIM", "") if raw is None else raw
    banks: dict[str, bytes | Signing] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        code, _, key = part.partition("=")
        if key.startswith("sm2:"):
            _, own, peer = key.split(":")
            banks[code] = Sm2Signing(own=PrivateKey(own), peer=PublicKey(peer))
        else:
            banks[code] = key.encode()
    return banks


def create_app(banks: dict[str, bytes | Signing] | None = None) -> BankSimulator:
    return BankSimulator(banks if banks is not None else banks_from_env())
