"""Printable onboarding sheets: cards of QR code, address, provider and three instructions.

Pure: cards in, PDF bytes or SVG markup out. A4, two columns of four cards with dashed cut
lines (or one large card per page: `poster`). The QR codes are drawn as vector rectangles
from the same module matrix as the SVG, so they stay crisp at any print resolution.

PDF by fpdf2 (pyproject.toml says why): pure Python, no system libraries, and a 1000-card
batch in seconds. Text uses DejaVu Sans when the system has it (Debian's fonts-dejavu-core),
which covers Latin, Greek and Cyrillic; otherwise the PDF core font, with characters
outside Latin-1 transliterated (anyascii) rather than dropped.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anyascii import anyascii
from fpdf import FPDF

from providers import qr

# The three lines of a card, per language (the sheet's language: see instructions_for).
INSTRUCTIONS: dict[str, tuple[str, str, str]] = {
    "en": (
        "1. Install Delta Chat (delta.chat) from your app store.",
        "2. Open it, choose to add a profile and scan this code.",
        "3. Choose the name others will see. Done!",
    ),
    "de": (
        "1. Installieren Sie Delta Chat (delta.chat) aus Ihrem App-Store.",
        "2. Öffnen Sie die App, wählen Sie ein neues Profil und scannen Sie diesen Code.",
        "3. Wählen Sie den Namen, den andere sehen. Fertig!",
    ),
}
# A DCACCOUNT card's title: the address is made when the code is scanned.
NEW_ADDRESS = {
    "en": "Your new address at {domain}",
    "de": "Ihre neue Adresse bei {domain}",
}
DEFAULT_LANGUAGE = "en"
FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/local/share/fonts/dejavu"),
)

# A4 in millimetres, and the card grid.
PAGE_W, PAGE_H = 210.0, 297.0
MARGIN = 10.0
COLUMNS, ROWS = 2, 4
CARD_W = (PAGE_W - 2 * MARGIN) / COLUMNS
CARD_H = (PAGE_H - 2 * MARGIN) / ROWS


@dataclass(frozen=True)
class Card:
    qr_text: str
    title: str  # the address, or for a DCACCOUNT code "a new address at <domain>"
    provider_name: str
    instructions: tuple[str, str, str]
    logo_png: bytes | None = None


def instructions_for(languages: Sequence[str]) -> tuple[str, str, str]:
    """The instructions in the first of `languages` (tags like de-AT) we have, else English."""
    for tag in languages:
        base = tag.strip().lower().split("-")[0]
        if base in INSTRUCTIONS:
            return INSTRUCTIONS[base]
    return INSTRUCTIONS[DEFAULT_LANGUAGE]


def language_of(languages: Sequence[str]) -> str:
    """The language code instructions_for picks (for the HTML sheet's lang attribute)."""
    for tag in languages:
        base = tag.strip().lower().split("-")[0]
        if base in INSTRUCTIONS:
            return base
    return DEFAULT_LANGUAGE


def print_logo(data: bytes, content_type: str) -> bytes | None:
    """A provider's logo (providers.branding's types) as PNG for a card, or None.

    Raster logos are converted (fpdf2 reads PNG, JPEG and GIF, not WebP) and shrunk to at
    most 600 px; an SVG logo is left off printed cards (None).
    """
    if not data or not content_type.startswith("image/") or content_type == "image/svg+xml":
        return None
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # Pillow raises many kinds for a broken file; the card goes without
        return None
    image.thumbnail((600, 600))
    buffer = io.BytesIO()
    image.convert("RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def svg_markup(text: str) -> str:
    """Inline SVG of a code, for HTML sheets (no XML declaration)."""
    document = qr.svg(text).decode()
    return document[document.index("<svg") :]


@dataclass(frozen=True)
class Printable:
    """One code ready for a page shown once: inline SVG, and PNG and SVG files as base64
    (offered as data: downloads, so the secret inside never travels in a URL)."""

    text: str
    svg: str
    png_base64: str
    svg_base64: str


def printable(text: str) -> Printable:
    document = qr.svg(text)
    return Printable(
        text=text,
        svg=svg_markup(text),
        png_base64=base64.b64encode(qr.png(text)).decode(),
        svg_base64=base64.b64encode(document).decode(),
    )


class _Sheet(FPDF):
    def __init__(self) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.set_auto_page_break(auto=False)
        self.set_margins(MARGIN, MARGIN)
        self.unicode = _add_dejavu(self)
        self.set_creator("mailportal")

    def use_font(self, size: float, *, bold: bool = False) -> None:
        family = "dejavu" if self.unicode else "helvetica"
        self.set_font(family, style="B" if bold else "", size=size)

    def text_for(self, value: str) -> str:
        if self.unicode:
            return value
        return "".join(char if ord(char) < 256 else anyascii(char) for char in value)


def _add_dejavu(pdf: FPDF) -> bool:
    for folder in FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file():
            pdf.add_font("dejavu", "", str(regular))
            pdf.add_font("dejavu", "B", str(bold if bold.is_file() else regular))
            return True
    return False


def pdf(
    cards: Sequence[Card],
    *,
    poster: bool = False,
    title: str = "Onboarding sheet",
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """The sheet as PDF bytes: cards in a 2 x 4 grid per A4 page, or one per page (poster).

    `progress(n)` is called after every 50 cards drawn (for a batch's progress bar).
    """
    sheet = _Sheet()
    sheet.set_title(title)
    for index, card in enumerate(cards):
        if poster:
            sheet.add_page()
            _draw_poster(sheet, card)
        else:
            if index % (COLUMNS * ROWS) == 0:
                sheet.add_page()
            slot = index % (COLUMNS * ROWS)
            x = MARGIN + (slot % COLUMNS) * CARD_W
            y = MARGIN + (slot // COLUMNS) * CARD_H
            _draw_card(sheet, card, x, y)
        if progress is not None and (index + 1) % 50 == 0:
            progress(index + 1)
    if not cards:
        sheet.add_page()
    return bytes(sheet.output())


def _draw_card(sheet: _Sheet, card: Card, x: float, y: float) -> None:
    # Dashed cut lines around the card.
    sheet.set_draw_color(150)
    sheet.set_line_width(0.2)
    with sheet.local_context():
        sheet.set_dash_pattern(dash=1.5, gap=1.5)
        sheet.rect(x, y, CARD_W, CARD_H)
    pad = 4.0
    qr_size = 48.0
    _draw_qr(sheet, qr.matrix(card.qr_text), x + pad, y + pad, qr_size)
    # Right of the code: logo, provider, instructions.
    text_x = x + pad + qr_size + 1.0
    text_w = x + CARD_W - pad - text_x
    cursor = y + pad + 2.0
    if card.logo_png:
        sheet.image(io.BytesIO(card.logo_png), x=text_x, y=cursor, h=9.0, keep_aspect_ratio=True)
        cursor += 10.5
    sheet.set_text_color(0)
    sheet.use_font(10, bold=True)
    sheet.set_xy(text_x, cursor)
    sheet.multi_cell(text_w, 4.5, sheet.text_for(card.provider_name), align="L")
    cursor = sheet.get_y() + 2.0
    sheet.use_font(7)
    for line in card.instructions:
        sheet.set_xy(text_x, cursor)
        sheet.multi_cell(text_w, 3.2, sheet.text_for(line), align="L")
        cursor = sheet.get_y() + 0.8
    # Below the code, the whole card wide: the address, as large as fits on one line.
    width = CARD_W - 2 * pad
    _fit_font(sheet, card.title, width, largest=11.0, smallest=6.0, bold=True)
    sheet.set_xy(x + pad, y + pad + qr_size + 2.0)
    sheet.multi_cell(width, 5.0, sheet.text_for(card.title), align="C")


def _draw_poster(sheet: _Sheet, card: Card) -> None:
    width = PAGE_W - 2 * MARGIN
    cursor = MARGIN + 5
    if card.logo_png:
        sheet.image(io.BytesIO(card.logo_png), x=MARGIN, y=cursor, h=20.0, keep_aspect_ratio=True)
        cursor += 24
    sheet.use_font(24, bold=True)
    sheet.set_xy(MARGIN, cursor)
    sheet.multi_cell(width, 10, sheet.text_for(card.provider_name), align="C")
    cursor = sheet.get_y() + 4
    qr_size = 140.0
    _draw_qr(sheet, qr.matrix(card.qr_text), (PAGE_W - qr_size) / 2, cursor, qr_size)
    cursor += qr_size + 6
    sheet.use_font(14)
    sheet.set_xy(MARGIN, cursor)
    sheet.multi_cell(width, 7, sheet.text_for(card.title), align="C")
    cursor = sheet.get_y() + 6
    sheet.use_font(13)
    for line in card.instructions:
        sheet.set_xy(MARGIN + 15, cursor)
        sheet.multi_cell(width - 30, 6.5, sheet.text_for(line), align="L")
        cursor = sheet.get_y() + 2


def _fit_font(
    sheet: _Sheet, text: str, width: float, *, largest: float, smallest: float, bold: bool = False
) -> None:
    """The largest size at which `text` fits on one line, down to `smallest` (then it wraps)."""
    size = largest
    while size > smallest:
        sheet.use_font(size, bold=bold)
        if sheet.get_string_width(sheet.text_for(text)) <= width:
            return
        size -= 0.5
    sheet.use_font(smallest, bold=bold)


def _draw_qr(sheet: _Sheet, modules: list[list[bool]], x: float, y: float, size: float) -> None:
    """The modules as filled rectangles, one per horizontal run (quiet zone left white)."""
    unit = size / len(modules)
    sheet.set_fill_color(0)
    for row, start, length in qr.runs(modules):
        sheet.rect(x + start * unit, y + row * unit, length * unit, unit, style="F")
