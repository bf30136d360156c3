"""The PDF toolkit shared by the fiscal e-note and the bill payment notice.

fpdf2 draws; the CJK face is Noto Sans SC (SIL Open Font License 1.1) shipped as a wheel by
`pylopdf-fonts-zh-cn`, so a fresh machine renders Chinese without a network or a system font,
and the font's subset is embedded in every PDF (no viewer-side font needed). pypdfium2
rasterises a PDF to PNG for the `.png` endpoints and for tests. QR codes are drawn as
vector squares from the `qrcode` matrix, so they stay sharp at any zoom.

Everything here takes plain values (no ORM rows), so any package can render a document.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Literal

import pylopdf_fonts_zh_cn
import qrcode
from fpdf import FPDF
from PIL import Image, ImageStat

__all__ = [
    "BLACK",
    "GREY",
    "RED",
    "Column",
    "DocItem",
    "Sheet",
    "font_path",
    "ink_ratio",
    "pdf_to_png",
    "yuan",
]

FONT = "NotoSansSC"
BLACK = (0, 0, 0)
RED = (200, 16, 30)
GREY = (110, 110, 110)
Color = tuple[int, int, int]


@cache
def font_path() -> Path:
    path = Path(pylopdf_fonts_zh_cn.sans_path())
    if not path.is_file():
        raise RuntimeError(f"CJK font missing at {path}; reinstall pylopdf-fonts-zh-cn")
    return path


def yuan(fen: int) -> str:
    """12345 → '123.45', -100 → '-1.00', 123456789 → '1,234,567.89'; integers only."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}"


@dataclass(frozen=True, slots=True)
class DocItem:
    """One line of a notice or a note; amounts in fen."""

    code: str
    name: str
    unit: str
    quantity: int
    standard_fen: int
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    width: float
    align: Literal["L", "C", "R"] = "L"


class Sheet:
    """A one-page drawing surface in millimetres with the CJK font loaded."""

    def __init__(
        self,
        *,
        page: Literal["A4", "A5"] = "A4",
        landscape: bool = False,
        title: str = "",
        when: datetime | None = None,
    ) -> None:
        size = {"A4": (210.0, 297.0), "A5": (148.0, 210.0)}[page]
        pdf = FPDF(orientation="L" if landscape else "P", unit="mm", format=size)
        pdf.set_auto_page_break(auto=False)
        pdf.set_margins(0, 0, 0)
        pdf.add_font(FONT, fname=str(font_path()))
        pdf.set_title(title)
        pdf.set_creator("paygate")
        if when is not None:
            pdf.set_creation_date(when)
        pdf.add_page()
        self.pdf = pdf
        self.width = float(pdf.w)
        self.height = float(pdf.h)

    def text(
        self,
        x: float,
        y: float,
        value: str,
        *,
        size: float = 9,
        width: float = 0,
        align: Literal["L", "C", "R"] = "L",
        color: Color = BLACK,
        height: float | None = None,
    ) -> None:
        """One line of text whose top-left is (x, y); `width` > 0 aligns inside a box."""
        pdf = self.pdf
        pdf.set_font(FONT, size=size)
        pdf.set_text_color(*color)
        pdf.set_xy(x, y)
        pdf.cell(
            w=width or pdf.get_string_width(value) + 0.5,
            h=height or size * 0.45,
            text=value,
            align=align,
        )

    def fit_text(
        self, x: float, y: float, value: str, *, width: float, size: float = 9, **kw: object
    ) -> None:
        """Shrink the font until `value` fits `width` (long names in fixed table cells)."""
        self.pdf.set_font(FONT, size=size)
        while size > 5 and self.pdf.get_string_width(value) > width - 1:
            size -= 0.5
            self.pdf.set_font(FONT, size=size)
        align = kw.get("align", "L")
        color = kw.get("color", BLACK)
        assert align in ("L", "C", "R")
        assert isinstance(color, tuple)
        self.text(x, y, value, size=size, width=width, align=align, color=color)

    def line(
        self,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        *,
        color: Color = BLACK,
        width: float = 0.2,
    ) -> None:
        self.pdf.set_draw_color(*color)
        self.pdf.set_line_width(width)
        self.pdf.line(x1, y1, x2, y2)

    def box(
        self, x: float, y: float, w: float, h: float, *, color: Color = BLACK, width: float = 0.3
    ) -> None:
        self.pdf.set_draw_color(*color)
        self.pdf.set_line_width(width)
        self.pdf.rect(x, y, w, h)

    def table(
        self,
        x: float,
        y: float,
        columns: Sequence[Column],
        rows: Sequence[Sequence[str]],
        *,
        row_height: float = 6.5,
        size: float = 8.5,
        color: Color = BLACK,
        min_rows: int = 0,
    ) -> float:
        """A ruled table; returns the y just below it. Blank rows pad to `min_rows`."""
        total_w = sum(c.width for c in columns)
        all_rows = [list(r) for r in rows]
        all_rows += [[""] * len(columns)] * max(0, min_rows - len(all_rows))
        height = row_height * (len(all_rows) + 1)
        self.box(x, y, total_w, height, color=color)
        for n in range(1, len(all_rows) + 1):
            self.line(x, y + n * row_height, x + total_w, y + n * row_height, color=color)
        cx = x
        for col in columns[:-1]:
            cx += col.width
            self.line(cx, y, cx, y + height, color=color)
        pad = (row_height - size * 0.42) / 2
        cx = x
        for col in columns:
            self.fit_text(
                cx, y + pad, col.title, width=col.width, size=size, align="C", color=color
            )
            cx += col.width
        for n, row in enumerate(all_rows, start=1):
            cx = x
            for col, cell in zip(columns, row, strict=True):
                if cell:
                    self.fit_text(
                        cx + 0.5,
                        y + n * row_height + pad,
                        cell,
                        width=col.width - 1,
                        size=size,
                        align=col.align,
                    )
                cx += col.width
        return y + height

    def qr(self, x: float, y: float, size: float, data: str) -> None:
        """A QR code (error correction M) as filled squares in a `size` mm square."""
        code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
        code.add_data(data)
        code.make(fit=True)
        matrix = code.get_matrix()
        cell = size / len(matrix)
        pdf = self.pdf
        pdf.set_fill_color(0, 0, 0)
        for r, row in enumerate(matrix):
            c = 0
            while c < len(row):
                if not row[c]:
                    c += 1
                    continue
                start = c
                while c < len(row) and row[c]:
                    c += 1
                # One rectangle per horizontal run keeps the PDF small.
                pdf.rect(x + start * cell, y + r * cell, (c - start) * cell, cell, style="F")

    def seal(self, cx: float, cy: float, radius: float, label: str, sub: str = "") -> None:
        """A red seal placeholder (the real seal image is applied by the seal service)."""
        pdf = self.pdf
        pdf.set_draw_color(*RED)
        pdf.set_line_width(0.6)
        pdf.ellipse(cx - radius, cy - radius, 2 * radius, 2 * radius)
        pdf.set_line_width(0.25)
        pdf.ellipse(cx - radius + 1.2, cy - radius + 1.2, 2 * radius - 2.4, 2 * radius - 2.4)
        self.fit_text(
            cx - radius + 2, cy - 3, label, width=2 * radius - 4, size=7, align="C", color=RED
        )
        if sub:
            self.fit_text(
                cx - radius + 2, cy + 1.5, sub, width=2 * radius - 4, size=5.5, align="C", color=RED
            )

    @contextmanager
    def rotated(self, angle: float, x: float, y: float) -> Iterator[None]:
        with self.pdf.rotation(angle, x, y):
            yield

    def output(self) -> bytes:
        return bytes(self.pdf.output())


def pdf_to_png(pdf: bytes, *, scale: float = 2.0) -> bytes:
    """Rasterise the first page (pdfium, a C library in a wheel; no poppler needed)."""
    import pypdfium2

    document = pypdfium2.PdfDocument(pdf)
    try:
        image = document[0].render(scale=scale).to_pil()
    finally:
        document.close()
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def ink_ratio(png: bytes) -> float:
    """Share of pixels that are not near-white: 0 for a blank page."""
    with Image.open(io.BytesIO(png)) as image:
        grey = image.convert("L")
        dark = grey.point(lambda v: 255 if v < 200 else 0)
        return float(ImageStat.Stat(dark).mean[0]) / 255
