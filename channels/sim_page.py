"""Small server-rendered pages for the device simulators (a kiosk's screen, a card terminal's
display) that a person uses in the demo: one look, form posts, no script.

Only presentation lives here; each page drives its simulator's own client code, so a page
speaks the device protocol exactly as the tests' switches do.
"""

from __future__ import annotations

import html
import re
import urllib.parse

import qrcode
import qrcode.image.svg

__all__ = ["HTML", "esc", "page", "parse_form", "payment_code_from", "qr_svg", "redirect"]

HTML = {"content-type": "text/html; charset=utf-8"}

_STYLE = """
body{font-family:system-ui,"PingFang SC","Microsoft YaHei",sans-serif;max-width:36rem;
margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}table{border-collapse:collapse;width:100%}
td,th{padding:.35rem .4rem;border-bottom:1px solid #ddd;text-align:left}
td.num,th.num{text-align:right}.due{font-size:1.6rem;color:#c00}
.err{background:#fee;border:1px solid #c00;padding:.6rem}.ok{background:#efe;
border:1px solid #080;padding:.6rem}.box{border:1px solid #ccc;padding:.8rem;margin:1rem 0}
button{font-size:1rem;padding:.5rem 1rem;margin:.2rem}input{font-size:1.1rem;padding:.3rem}
.slip{font-family:ui-monospace,monospace;white-space:pre-wrap;border:1px dashed #888;
padding:.8rem;background:#fffef6}svg{width:10rem;height:10rem}small{color:#666}
"""

_CODE = re.compile(r"(\d{20})(?!\d)")


def esc(value: object) -> str:
    return html.escape(str(value))


def page(title: str, body: str) -> bytes:
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    ).encode()


def redirect(location: str) -> tuple[int, bytes, dict[str, str]]:
    return 303, b"", {"location": location, **HTML}


def parse_form(body: bytes) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def payment_code_from(text: str) -> str:
    """What a person typed, or a scanner typed from the notice's QR code (the bill's URL,
    `…/pay/<code>`): the 20-digit payment code in it, else the text itself (the platform
    then answers that it is no payment code)."""
    found = _CODE.findall(text)
    return found[-1] if found else text.strip()


def qr_svg(data: str) -> str:
    img = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    return str(img.to_string(encoding="unicode"))
