"""Fiscal e-notes over HTTP (public verification, PDF/PNG, the cashier's list) and the
worker jobs that issue and red-letter them. Thin: parse → call enotes → shape."""

from __future__ import annotations

import asyncio
import html
import uuid
from typing import Any

import msgspec
import structlog
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from billing.payment_code import validate as validate_payment_code
from enotes import service as enotes
from enotes.document import render_note
from enotes.signing import NoteSigners, Verifier, load_signer, load_verifier
from gateway.pay_api import rate_limit
from gateway.settings import Settings
from gateway.state import Resources
from kernel.errors import Conflict, InvalidInput, NotFound, RateLimited
from kernel.pdf import pdf_to_png, yuan

log = structlog.get_logger(__name__)


_CONTEXTS: dict[Settings, enotes.EnoteContext] = {}


def enote_context(settings: Settings) -> enotes.EnoteContext:
    """Signers and settings for e-notes, built once per process and settings."""
    if (ctx := _CONTEXTS.get(settings)) is None:
        if len(_CONTEXTS) >= 4:  # settings rarely change in a process; tests make a few
            _CONTEXTS.pop(next(iter(_CONTEXTS))).close()
        ctx = _CONTEXTS[settings] = _build_context(settings)
    return ctx


def _build_context(settings: Settings) -> enotes.EnoteContext:
    cfg = settings.enote
    demo = not settings.is_production  # production signs only with configured keys
    signers = NoteSigners(
        issuer=load_signer(
            cfg.issuer_key, cfg.key_dir / "issuer.pem", cfg.issuer_cert_serial, allow_demo=demo
        ),
        supervisor=load_signer(
            cfg.supervisor_key,
            cfg.key_dir / "supervisor.pem",
            cfg.supervisor_cert_serial,
            allow_demo=demo,
        ),
        retired=tuple(load_verifier(k) for k in cfg.retired_keys),
    )
    return enotes.EnoteContext(
        signers=signers,
        config=enotes.EnoteConfig(
            note_class=cfg.note_class,
            handler=cfg.handler,
            checker=cfg.checker,
            public_url=settings.server.public_url,
        ),
    )


def keyring(settings: Settings) -> dict[str, Verifier]:
    return enote_context(settings).signers.keyring()


async def issue_job(resources: Resources) -> int:
    return await enotes.issue_pending(resources.sessions, enote_context(resources.settings))


async def close_signing() -> None:
    """The worker is stopping: end the signing processes of every context."""
    for ctx in _CONTEXTS.values():
        ctx.close()


async def red_job(resources: Resources) -> int:
    return await enotes.run_red_job(resources.sessions, enote_context(resources.settings))


async def checked_verify(  # noqa: PLR0917 - the request's parts, as every caller has them
    resources: Resources,
    request: Request[Any, Any, Any],
    db: AsyncSession,
    code: str,
    number: str,
    check: str,
) -> enotes.Verification:
    """Verify a note, throttled against check-code guessing: per client (the lookup limit)
    and per note (`guess_budget` wrong check codes per window from everyone together; a
    note's numbers are sequential, so only its six-digit check code is secret)."""
    pay = resources.settings.payments
    await rate_limit(resources, request, "verify", pay.lookup_rate_limit)
    enotes.valid_query(code, number, check)
    note = f"{code}:{number}"
    await resources.limiter.check_budget("enote-check", note, pay.guess_budget, pay.guess_window_s)
    try:
        return await enotes.verify(db, code, number, check, keyring(resources.settings))
    except NotFound:
        await resources.limiter.spend("enote-check", note, pay.guess_window_s)
        raise


async def payer_notes(  # noqa: PLR0917 - the request's parts, as every caller has them
    resources: Resources,
    request: Request[Any, Any, Any],
    db: AsyncSession,
    payment_code: str,
    payer_name: str | None = None,
    attempt_id: uuid.UUID | None = None,
) -> list[enotes.NoteSummary]:
    """A bill's notes for its payer (payment code + second factor, see
    enotes.notes_for_payer), throttled per client and per payment code (`guess_budget`
    failed second factors per window); shared by the API and the cashier page."""
    pay = resources.settings.payments
    await rate_limit(resources, request, "enotes", pay.lookup_rate_limit)
    validate_payment_code(payment_code)  # a mistyped code is a 422 before any lookup
    limiter = resources.limiter
    await limiter.check_budget("enote-factor", payment_code, pay.guess_budget, pay.guess_window_s)
    notes = await enotes.notes_for_payer(
        db,
        payment_code,
        resources.settings.server.public_url,
        payer_name=payer_name,
        attempt_id=attempt_id,
    )
    if notes is None:
        await limiter.spend("enote-factor", payment_code, pay.guess_window_s)
        raise NotFound("No notes for this payment code and payer.", code="enote_not_found")
    return notes


def _note_out(n: enotes.NoteSummary) -> dict[str, Any]:
    return {
        "kind": n.kind,
        "status": n.status,
        "note_code": n.note_code,
        "note_number": n.note_number,
        "check_code": n.check_code,
        "total_amount": n.total_amount,
        "issued_at": n.issued_at.isoformat(),
        **n.urls,
    }


class NotesLookupIn(msgspec.Struct, forbid_unknown_fields=True):
    payment_code: str
    payer_name: str | None = None
    """The payer's full name as on the notice (person or organisation)."""
    attempt_id: uuid.UUID | None = None
    """A succeeded payment attempt of the bill (what the payer's own payment returned)."""


def verification_body(result: enotes.Verification) -> dict[str, Any]:
    note, main = result.note, result.content.get("main", {})
    body: dict[str, Any] = {
        "status": result.status,
        "kind": note.kind,
        "note_code": note.note_code,
        "note_number": note.note_number,
        "signatures": [
            {
                "role": s.role,
                "algorithm": s.algorithm,
                "key_id": s.key_id,
                "cert_serial": s.cert_serial,
                "signed_at": s.signed_at.isoformat(),
                "valid": s.valid,
            }
            for s in result.signatures
        ],
        "problems": result.problems,
    }
    if result.status != "invalid":
        body |= {
            "name": main.get("name"),
            "issued_at": main.get("issued_at"),
            "total_amount": main.get("total"),
            "total_capitals": main.get("total_capitals"),
            "issuer": main.get("issuer"),
            "payer": main.get("payer"),
            "payment_code": main.get("payment_code"),
            "original": main.get("original"),
            "items": result.content.get("details"),
        }
    return body


class EnoteController(Controller):
    path = "/v1/enotes"
    tags = ["enotes"]  # noqa: RUF012

    @get("/verify", summary="Verify a fiscal e-note by code, number and check code", cache=False)
    async def verify(  # noqa: PLR0917 - Litestar passes the handler's parameters
        self,
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        request: Request[Any, Any, Any],
        code: FromQuery[str],
        number: FromQuery[str],
        check: FromQuery[str],
    ) -> dict[str, Any]:
        result = await checked_verify(resources, request, db, code, number, check)
        return verification_body(result)

    @get(
        "/",
        summary="The notes of a bill, by its payment code and a paid attempt's id",
        cache=False,
    )
    async def by_payment_code(  # noqa: PLR0917 - Litestar passes the handler's parameters
        self,
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        request: Request[Any, Any, Any],
        payment_code: FromQuery[str],
        attempt_id: FromQuery[uuid.UUID | None] = None,
        payer_name: FromQuery[str | None] = None,
    ) -> list[dict[str, Any]]:
        if payer_name is not None:
            # Refused rather than ignored: a name in a URL ends up in proxy and browser logs.
            raise InvalidInput(
                "A payer's name must not travel in a URL; send it in the body of"
                " POST /v1/enotes/lookup.",
                code="payer_name_in_url",
            )
        notes = await payer_notes(resources, request, db, payment_code, attempt_id=attempt_id)
        return [_note_out(n) for n in notes]

    @post(
        "/lookup",
        summary="The notes of a bill, by its payment code and the payer's name or a paid"
        " attempt's id",
        status_code=200,
    )
    async def lookup(
        self,
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        request: Request[Any, Any, Any],
        data: JSONBody[NotesLookupIn],
    ) -> list[dict[str, Any]]:
        notes = await payer_notes(
            resources, request, db, data.payment_code, data.payer_name, data.attempt_id
        )
        return [_note_out(n) for n in notes]

    @get(
        "/{code:str}/{filename:str}",
        summary="The note as a one-page PDF (`.pdf`) or PNG (`.png`)",
        cache=False,
    )
    async def document(  # noqa: PLR0917 - Litestar passes the handler's parameters
        self,
        db: NamedDependency[AsyncSession],
        resources: NamedDependency[Resources],
        request: Request[Any, Any, Any],
        code: FromPath[str],
        filename: FromPath[str],
        check: FromQuery[str],
    ) -> Response[bytes]:
        number, dot, ext = filename.partition(".")
        if not dot or ext not in {"pdf", "png"}:
            raise NotFound("notes are served as .pdf or .png", code="enote_not_found")
        result = await checked_verify(resources, request, db, code, number, check)
        if result.status == "invalid":
            raise Conflict("this note fails verification", code="enote_invalid")
        view = enotes.note_view(result, resources.settings.server.public_url)
        await db.rollback()  # nothing to write; don't hold a transaction while rendering
        pdf = await asyncio.to_thread(render_note, view)
        if ext == "pdf":
            return Response(
                pdf,
                media_type="application/pdf",
                headers={"Content-Disposition": f'inline; filename="{code}-{number}.pdf"'},
            )
        png = await asyncio.to_thread(pdf_to_png, pdf)
        return Response(png, media_type="image/png")


_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>财政电子票据查验</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}
label{{display:inline-block;margin:.3rem 1rem .3rem 0}} input{{font-size:1rem}}
.valid{{color:#176f2c}} .invalid{{color:#b00020}} .red_lettered{{color:#c8101e}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2rem .5rem}}
</style></head><body>
<h1>财政电子票据查验</h1>
<form method="get" action="/enotes/verify">
<label>票据代码 <input name="code" value="{code}" size="8" maxlength="8" required></label>
<label>票据号码 <input name="number" value="{number}" size="10" maxlength="10" required></label>
<label>校验码 <input name="check" value="{check}" size="6" maxlength="6" required></label>
<button type="submit">查验</button>
</form>
{result}
</body></html>"""

_STATUS_TEXT = {
    "valid": "票据真实有效，两个签名验证通过",
    "red_lettered": "票据已冲红（作废），签名验证通过",
    "invalid": "票据验证失败：内容或签名不符",
}


def _result_html(body: dict[str, Any], pdf_query: str) -> str:
    status = body["status"]
    esc = html.escape
    parts = [f'<h2 class="{status}">{esc(_STATUS_TEXT[status])}</h2>']
    rows: list[tuple[str, str]] = [
        ("票据代码", body["note_code"]),
        ("票据号码", body["note_number"]),
        ("票据种类", "红字票据" if body["kind"] == "RED" else "票据"),
    ]
    if status != "invalid":
        payer = body.get("payer") or {}
        issuer = body.get("issuer") or {}
        rows += [
            ("票据名称", str(body.get("name"))),
            ("开票时间", str(body.get("issued_at"))),
            ("开票单位", str(issuer.get("name"))),
            ("交款人", f"{payer.get('name', '')} {payer.get('id_code', '')}".strip()),
            ("金额", f"¥{yuan(int(body.get('total_amount') or 0))}"),
            ("金额（大写）", str(body.get("total_capitals"))),
        ]
    for sig in body["signatures"]:
        verdict = "通过" if sig["valid"] else "失败"
        who = "开票单位签名" if sig["role"] == "issuer" else "财政监制签名"
        rows.append((who, f"{verdict} · {sig['algorithm']} · 证书 {sig['cert_serial']}"))
    parts.append("<table>")
    parts += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows]
    parts.append("</table>")
    if status != "invalid":
        base = f"/v1/enotes/{body['note_code']}/{body['note_number']}"
        parts.append(
            f'<p><a href="{esc(base)}.pdf?{esc(pdf_query)}">下载 PDF</a> · '
            f'<a href="{esc(base)}.png?{esc(pdf_query)}">查看图片</a></p>'
        )
    return "\n".join(parts)


@get("/enotes/verify", media_type=MediaType.HTML, include_in_schema=False, cache=False)
async def verify_page(  # noqa: PLR0917 - Litestar passes the handler's parameters
    db: NamedDependency[AsyncSession],
    resources: NamedDependency[Resources],
    request: Request[Any, Any, Any],
    code: FromQuery[str] = "",
    number: FromQuery[str] = "",
    check: FromQuery[str] = "",
) -> Response[str]:
    """The public verification page the note's QR code points to."""
    result = ""
    status = 200
    if code or number or check:
        try:
            verification = await checked_verify(resources, request, db, code, number, check)
            result = _result_html(verification_body(verification), f"check={check}")
        except (NotFound, InvalidInput) as exc:
            status = exc.status
            result = '<h2 class="invalid">查无此票据：请核对票据代码、号码和校验码</h2>'
        except RateLimited as exc:
            status = exc.status
            result = '<h2 class="invalid">查验过于频繁，请稍后再试</h2>'
    page = _PAGE.format(
        code=html.escape(code),
        number=html.escape(number),
        check=html.escape(check),
        result=result,
    )
    return Response(page, status_code=status, media_type=MediaType.HTML)
