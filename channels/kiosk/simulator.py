"""Kiosks and their acquirer, speaking the kiosk protocol, for tests, benches and the demo.

A plain ASGI app (no framework: it must not share code paths with the service it tests).

The acquirer answers our signed calls (docs/channels/kiosk.md, "The acquirer"):

    POST /acquirer/query         {"order_id"}                 → the charge for that order
    POST /acquirer/refund        {"refund_id", "order_id", "reference", "amount"}
    POST /acquirer/refund_query  {"refund_id"}
    POST /acquirer/statement     {"date"}                     → JSON lines of the day

Control API (unsigned: the test or the demo playing a payer at a kiosk, or its operator):

    POST /control/devices              {"device_id", "secret" | "private_pem",
                                        "platform_public_pem", "next_seq",
                                        "gateway_url"}  load a registered device
    POST /control/<device>/pay         {"payment_code", "gateway_url", "method",
                                        "offline", "lost_answer", "duplicates",
                                        "forged", "replay", "no_order", "amount_delta",
                                        "charge_twice"}
    POST /control/<device>/upload      {"gateway_url", "batch", "reorder", "twice",
                                        "withhold": [seq…], "forged"}
    POST /control/<device>/heartbeat   {"gateway_url"}
    POST /control/<device>/reprint     {"gateway_url", "seq"}
    GET  /control/<device>/state       → sequence counter, stored confirmations
    GET  /control/acquirer             → charges and refunds

Switches: `offline` keeps the confirmation instead of sending it (store and forward);
`lost_answer` sends it but drops our answer, so it stays stored and goes again in the next
upload; `duplicates` sends it again n times; `forged` signs with a wrong key; `replay`
sends the very same signed message twice; `charge_twice` charges the card a second time
under the same order id (a faulty kiosk) and confirms that too, with its own sequence
number and reference, and once more (a repeat); `reorder` shuffles an upload; `twice` uploads
every batch a second time; `withhold` keeps some numbers back (a gap) for a later upload.

The kiosk's screen, for a person (the demo): `GET /kiosk/<device>` takes a typed or scanned
payment code, shows the bill with today's amount due, pays it by card and prints the slip
on screen, with reprint (`channels.kiosk.screen`). It talks to the device's `gateway_url`
through the very methods above (`send`, `pay`, `upload`): one implementation of the protocol.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import httpx

from channels import sim_page
from channels.kiosk import screen
from channels.kiosk import transforms as t
from channels.kiosk.adapter import acquirer_headers, acquirer_verify
from channels.money import fen_to_yuan, yuan_to_fen
from channels.sim_asgi import Receive, Scope, Send, lifespan, read_request, respond

__all__ = ["Charge", "Device", "KioskSimulator", "SimRefund", "create_app"]


@dataclass
class Charge:
    reference: str
    order_id: str | None
    device_id: str
    payment_code: str
    amount: int
    paid_at: str
    state: str = "SUCCESS"


@dataclass
class SimRefund:
    refund_id: str
    order_id: str
    reference: str | None
    amount: int
    state: str
    refunded_at: str


@dataclass
class Device:
    device_id: str
    secret: bytes | None
    private_pem: str | None
    platform_public_pem: str | None
    next_seq: int = 1
    stored: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Confirmations taken but not (known to be) received: seq → wire body."""
    gateway_url: str | None = None
    """The platform its screen talks to (the control API names one per call)."""


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class KioskSimulator:
    def __init__(self, acquirer_secret: bytes) -> None:
        self.acquirer_secret = acquirer_secret
        self.devices: dict[str, Device] = {}
        self.charges: dict[str, Charge] = {}
        self.by_order: dict[str, Charge] = {}
        self.refunds: dict[str, SimRefund] = {}
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=30.0)
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
        if len(parts) == 2 and parts[0] == "acquirer" and method == "POST":
            return self._acquirer(parts[1], headers, body)
        if parts[0] == "control":
            return await self._control(method, parts[1:], body)
        if parts[0] == "kiosk":
            return await self._screen(method, parts[1:], body)
        return 404, b'{"error":"not found"}', {}

    # ------------------------------------------------------------------ the acquirer

    def _acquirer(  # noqa: PLR0911 - one answer per operation and failure, like the acquirer
        self, operation: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        def answer(code: str, msg: str, data: Any = None) -> tuple[int, bytes, dict[str, str]]:
            out = _json({"code": code, "msg": msg, "data": data})
            signed = acquirer_headers(self.acquirer_secret, f"RESPONSE:{operation}", out)
            signed.pop("Content-Type", None)
            return 200, out, signed

        if not acquirer_verify(self.acquirer_secret, operation, headers, body):
            return answer("96", "signature check failed")
        req = json.loads(body)
        if operation == "query":
            charge = self.by_order.get(str(req.get("order_id")))
            if charge is None:
                return answer("25", "no such order")
            return answer("00", "ok", self._charge_doc(charge))
        if operation == "refund":
            refund_id = str(req["refund_id"])
            if refund_id in self.refunds:  # idempotent by our refund id
                return answer("00", "ok", self._refund_doc(self.refunds[refund_id]))
            # The reference names the charge, unless the refund names another charge's
            # order; an order id we never issued (the platform's own id for a charge made
            # under none, or under an order another charge had used) does not overrule it.
            charge = self.charges.get(str(req.get("reference")))
            order = str(req.get("order_id"))
            if charge is None or (charge.order_id not in (None, order) and order in self.by_order):
                charge = self.by_order.get(order)
            amount = yuan_to_fen(str(req["amount"]))
            if charge is None:
                return answer("25", "no such charge")
            taken = sum(r.amount for r in self.refunds.values() if r.reference == charge.reference)
            if taken + amount > charge.amount:
                return answer("61", "refund exceeds the charge")
            refund = SimRefund(
                refund_id=refund_id,
                order_id=str(req.get("order_id")),
                reference=charge.reference,
                amount=amount,
                state="SUCCESS",
                refunded_at=t.format_time(datetime.now(UTC)),
            )
            self.refunds[refund_id] = refund
            return answer("00", "ok", self._refund_doc(refund))
        if operation == "refund_query":
            found = self.refunds.get(str(req.get("refund_id")))
            if found is None:
                return answer("25", "no such refund")
            return answer("00", "ok", self._refund_doc(found))
        if operation == "statement":
            day = date.fromisoformat(str(req["date"]))
            lines = [
                _json(
                    {
                        "reference": c.reference,
                        "order_id": c.order_id or "",
                        "kind": "PAYMENT",
                        "amount": fen_to_yuan(c.amount),
                        "fee": "0.00",
                        "time": c.paid_at,
                    }
                ).decode()
                for c in self.charges.values()
                if t.parse_time(c.paid_at).date() == day
            ]
            # Refunds are listed too, negative, with the refund id they were asked under.
            lines += [
                _json(
                    {
                        "reference": r.reference or "",
                        "order_id": r.order_id,
                        "kind": "REFUND",
                        "amount": fen_to_yuan(-r.amount),
                        "fee": "0.00",
                        "time": r.refunded_at,
                        "refund_id": r.refund_id,
                    }
                ).decode()
                for r in self.refunds.values()
                if t.parse_time(r.refunded_at).date() == day
            ]
            out = ("\n".join(lines) + "\n").encode()
            signed = acquirer_headers(self.acquirer_secret, f"RESPONSE:{operation}", out)
            signed.pop("Content-Type", None)
            return 200, out, signed
        return answer("30", "unknown operation")

    @staticmethod
    def _charge_doc(c: Charge) -> dict[str, Any]:
        return {
            "state": c.state,
            "reference": c.reference,
            "amount": fen_to_yuan(c.amount),
            "paid_at": c.paid_at,
        }

    @staticmethod
    def _refund_doc(r: SimRefund) -> dict[str, Any]:
        return {
            "state": r.state,
            "amount": fen_to_yuan(r.amount),
            "refunded_at": r.refunded_at,
        }

    # ------------------------------------------------------------------ control

    async def _control(  # noqa: PLR0911 - one answer per control action
        self, method: str, parts: list[str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        req: dict[str, Any] = json.loads(body) if body else {}
        if parts == ["acquirer"] and method == "GET":
            return 200, _json(self.acquirer_state()), {}
        if parts == ["devices"] and method == "POST":
            device = self.add_device(
                str(req["device_id"]),
                secret=req.get("secret"),
                private_pem=req.get("private_pem"),
                platform_public_pem=req.get("platform_public_pem"),
                next_seq=int(req.get("next_seq", 1)),
                gateway_url=req.get("gateway_url"),
            )
            return 200, _json({"device_id": device.device_id}), {}
        if len(parts) != 2 or parts[0] not in self.devices:
            return 404, b'{"error":"unknown device"}', {}
        device, action = self.devices[parts[0]], parts[1]
        if action == "state" and method == "GET":
            return 200, _json({"next_seq": device.next_seq, "stored": sorted(device.stored)}), {}
        if method != "POST":
            return 404, b'{"error":"not found"}', {}
        gw = str(req.get("gateway_url", ""))
        if action == "pay":
            return 200, _json(await self.pay(device, gw, req)), {}
        if action == "upload":
            return 200, _json(await self.upload(device, gw, req)), {}
        if action == "heartbeat":
            return 200, _json(await self.send(device, gw, "heartbeat", self._hb(device))), {}
        if action == "reprint":
            return 200, _json(await self.send(device, gw, "reprint", {"seq": req["seq"]})), {}
        return 404, b'{"error":"not found"}', {}

    def acquirer_state(self) -> dict[str, Any]:
        return {
            "charges": [asdict(c) for c in self.charges.values()],
            "refunds": [asdict(r) for r in self.refunds.values()],
        }

    def add_device(
        self,
        device_id: str,
        *,
        secret: str | None = None,
        private_pem: str | None = None,
        platform_public_pem: str | None = None,
        next_seq: int = 1,
        gateway_url: str | None = None,
    ) -> Device:
        device = Device(
            device_id,
            secret.encode() if secret else None,
            private_pem,
            platform_public_pem,
            next_seq=next_seq,
            gateway_url=gateway_url,
        )
        self.devices[device_id] = device
        return device

    @staticmethod
    def _hb(device: Device) -> dict[str, Any]:
        return {"last_seq": device.next_seq - 1, "status": "OK"}

    # ------------------------------------------------------------------ the screen

    async def _screen(  # noqa: PLR0911 - one page per step of the payer's journey
        self, method: str, parts: list[str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        if not parts or not parts[0]:
            if len(self.devices) == 1:
                return sim_page.redirect(f"/kiosk/{next(iter(self.devices))}")
            return 200, screen.devices(sorted(self.devices)), dict(sim_page.HTML)
        device = self.devices.get(parts[0])
        if device is None:
            return 404, screen.devices(sorted(self.devices)), dict(sim_page.HTML)
        step = parts[1] if len(parts) == 2 else ""
        if method == "GET" and step == "":
            page = screen.start(device.device_id, stored=sorted(device.stored))
            return 200, page, dict(sim_page.HTML)
        if method != "POST" or device.gateway_url is None:
            return 404, b"not found", dict(sim_page.HTML)
        form = sim_page.parse_form(body)
        gw = device.gateway_url
        try:
            out = await self._screen_step(device, gw, step, form)
        except httpx.HTTPError as exc:
            # The link to the platform failed; a taken payment stays stored (upload later).
            answer = {"code": "-", "msg": f"无法连接平台 ({type(exc).__name__})"}
            out = screen.problem(device.device_id, answer, "通信失败 Link down")
        if out is None:
            return 404, b"not found", dict(sim_page.HTML)
        return 200, out, dict(sim_page.HTML)

    async def _screen_step(
        self, device: Device, gw: str, step: str, form: dict[str, str]
    ) -> bytes | None:
        steps = {
            "query": self._s_query,
            "pay": self._s_pay,
            "reprint": self._s_reprint,
            "upload": self._s_upload,
        }
        return await steps[step](device, gw, form) if step in steps else None

    async def _s_query(self, device: Device, gw: str, form: dict[str, str]) -> bytes:
        code = sim_page.payment_code_from(form.get("code", ""))
        answer = await self.send(device, gw, "query", {"payment_code": code})
        if answer.get("code") != t.ResultCode.OK or not answer.get("signature_ok"):
            return screen.problem(device.device_id, answer, "查询 Look-up")
        return screen.bill(device.device_id, answer["data"])

    async def _s_pay(self, device: Device, gw: str, form: dict[str, str]) -> bytes:
        code = sim_page.payment_code_from(form.get("code", ""))
        result = await self.pay(device, gw, {"payment_code": code, "method": "CARD"})
        answer = (result.get("confirms") or [result["query"]])[-1]
        data = answer.get("data") or {}
        if answer.get("code") != t.ResultCode.OK or not answer.get("signature_ok"):
            return screen.problem(device.device_id, answer, "支付 Payment")
        if "receipt" not in data:  # the confirmation's own result refused it
            return screen.problem(device.device_id, data | {"signature_ok": True}, "支付 Payment")
        seq, disposition = int(data["seq"]), data.get("disposition")
        return screen.slip(device.device_id, data["receipt"], seq=seq, disposition=disposition)

    async def _s_reprint(self, device: Device, gw: str, form: dict[str, str]) -> bytes:
        seq = int(form["seq"]) if form.get("seq", "").isdigit() else 0
        answer = await self.send(device, gw, "reprint", {"seq": seq})
        if answer.get("code") != t.ResultCode.OK or not answer.get("signature_ok"):
            return screen.problem(device.device_id, answer, "补打 Reprint")
        return screen.slip(device.device_id, answer["data"]["receipt"], seq=seq, disposition=None)

    async def _s_upload(self, device: Device, gw: str, form: dict[str, str]) -> bytes:
        del form
        await self.upload(device, gw, {})
        return screen.start(device.device_id, stored=sorted(device.stored))

    # ------------------------------------------------------------------ the kiosk's side

    def _signed(
        self, device: Device, operation: str, body: bytes, *, forged: bool = False
    ) -> dict[str, str]:
        if forged:
            if device.secret is not None:
                return t.request_headers(
                    operation, device.device_id, body, secret=secrets.token_bytes(32)
                )
            other, _ = t.sm2_keypair()
            return t.request_headers(operation, device.device_id, body, private_pem=other)
        return t.request_headers(
            operation,
            device.device_id,
            body,
            secret=device.secret,
            private_pem=None if device.secret is not None else device.private_pem,
        )

    async def post(
        self, device: Device, gateway_url: str, operation: str, body: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        resp = await self.client.post(
            f"{gateway_url.rstrip('/')}/v1/channels/kiosk/{operation}",
            content=body,
            headers=headers,
        )
        try:
            doc: dict[str, Any] = resp.json()
        except ValueError:
            doc = {"code": None, "body": resp.text[:200]}
        doc["http_status"] = resp.status_code
        # A kiosk trusts only answers the platform signed (its secret, or the platform key).
        doc["signature_ok"] = t.verify_response(
            operation,
            device.device_id,
            resp.headers,
            resp.content,
            secret=device.secret,
            platform_public_pem=device.platform_public_pem,
        )
        return doc

    async def send(
        self,
        device: Device,
        gateway_url: str,
        operation: str,
        payload: dict[str, Any],
        *,
        forged: bool = False,
    ) -> dict[str, Any]:
        body = _json(payload)
        headers = self._signed(device, operation, body, forged=forged)
        return await self.post(device, gateway_url, operation, body, headers)

    async def pay(self, device: Device, gw: str, req: dict[str, Any]) -> dict[str, Any]:
        """A payer at the kiosk: query, charge through the acquirer, confirm (or store)."""
        code = str(req["payment_code"])
        result: dict[str, Any] = {}
        order_id: str | None
        if (again := req.get("again_under")) is not None:
            # A faulty kiosk charging the card once more under an order it already used.
            order_id, amount = str(again["order_id"]), int(again["amount"])
        else:
            query = await self.send(device, gw, "query", {"payment_code": code})
            result["query"] = query
            if query.get("code") != t.ResultCode.OK or not query.get("signature_ok"):
                return result  # the kiosk takes no money for a bill it cannot pay
            order_id = None if req.get("no_order") else query["data"]["order_id"]
            amount = yuan_to_fen(query["data"]["amount"]) + int(req.get("amount_delta", 0))
        reference = f"{datetime.now(UTC):%m%d}{secrets.randbelow(10**8):08d}"
        paid_at = t.format_time(datetime.now(UTC))
        charge = Charge(reference, order_id, device.device_id, code, amount, paid_at)
        self.charges[reference] = charge
        if order_id is not None:
            self.by_order.setdefault(order_id, charge)  # the order's first charge
        seq = device.next_seq
        device.next_seq += 1
        confirm: dict[str, Any] = {
            "seq": seq,
            "order_id": order_id,
            "payment_code": code,
            "amount": fen_to_yuan(amount),
            "paid_at": paid_at,
            "acquirer_ref": reference,
            "method": str(req.get("method", "CARD")),
        }
        if confirm["method"] == "CARD":
            confirm["card"] = "622202******" + f"{secrets.randbelow(10**4):04d}"
        result |= {"seq": seq, "acquirer_ref": reference, "order_id": order_id, "sent": confirm}
        device.stored[seq] = confirm
        if req.get("offline"):
            result["confirms"] = []
            return result
        body = _json(confirm)
        answers = []
        for _ in range(1 + int(req.get("duplicates", 0))):  # each repeat freshly signed
            headers = self._signed(device, "confirm", body, forged=bool(req.get("forged")))
            answers.append(await self.post(device, gw, "confirm", body, headers))
        if req.get("replay"):  # the very same signed bytes again
            answers.append(await self.post(device, gw, "confirm", body, headers))
        if req.get("lost_answer"):
            result["confirms"] = []  # the network ate the answer: the kiosk keeps it stored
            return result
        if any(a.get("code") == t.ResultCode.OK and a.get("signature_ok") for a in answers):
            device.stored.pop(seq, None)
        result["confirms"] = answers
        if req.get("charge_twice") and order_id is not None:
            again_req = {"payment_code": code, "gateway_url": gw, "duplicates": 1}
            again_req["again_under"] = {"order_id": order_id, "amount": amount}
            result["again"] = await self.pay(device, gw, again_req)
        return result

    async def upload(self, device: Device, gw: str, req: dict[str, Any]) -> dict[str, Any]:
        """Forward stored confirmations in batches (strictly increasing numbers, each once
        per batch); what the platform acknowledged leaves the store."""
        withhold = {int(s) for s in req.get("withhold", [])}
        pending = [device.stored[s] for s in sorted(device.stored) if s not in withhold]
        if req.get("reorder"):
            random.shuffle(pending)
        size = max(1, min(int(req.get("batch", 20)), t.MAX_UPLOAD))
        batches = [pending[i : i + size] for i in range(0, len(pending), size)]
        if req.get("reorder"):
            random.shuffle(batches)
        answers = []
        for batch in batches:
            for _ in range(2 if req.get("twice") else 1):
                doc = await self.send(
                    device,
                    gw,
                    "upload",
                    {"confirmations": batch},
                    forged=bool(req.get("forged")),
                )
                answers.append(doc)
                if doc.get("code") == t.ResultCode.OK and doc.get("signature_ok"):
                    for r in doc["data"]["results"]:
                        if r["code"] != t.ResultCode.CONFLICT:
                            device.stored.pop(int(r["seq"]), None)
        return {"uploads": answers, "stored": sorted(device.stored)}


def create_app(
    acquirer_secret: bytes | None = None, devices: list[dict[str, Any]] | None = None
) -> KioskSimulator:
    """The simulator; `devices` are loaded as through POST /control/devices."""
    secret = acquirer_secret or os.environ.get("PAYGATE_KIOSK_ACQUIRER_SECRET", "").encode()
    if not secret:
        raise ValueError("the simulated acquirer needs PAYGATE_KIOSK_ACQUIRER_SECRET")
    sim = KioskSimulator(secret)
    for d in devices or []:
        sim.add_device(
            str(d["device_id"]),
            secret=d.get("secret"),
            private_pem=d.get("private_pem"),
            platform_public_pem=d.get("platform_public_pem"),
            next_seq=int(d.get("next_seq", 1)),
            gateway_url=d.get("gateway_url"),
        )
    return sim
