"""How a provider looks on the portal's pages: accent colours that keep text readable, logos.

Pure: colours and bytes in, values out. The pages (registration now, self-service later)
take a Palette and set it as CSS custom properties; the logo view serves what `sniff_logo`
accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anyascii import anyascii
from lxml import etree

# The portal's own blue (static/css/portal.css), used when a provider sets no colour.
DEFAULT_ACCENT = "#0b5cad"
# WCAG 2.x contrast for normal text (success criterion 1.4.3, level AA).
MIN_TEXT_CONTRAST = 4.5
WHITE = "#ffffff"
BLACK = "#000000"

_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")


class LogoRefused(ValueError):
    """Bytes that are not a logo we serve; the message says why, for the administrator."""


@dataclass(frozen=True)
class Palette:
    """Colours derived from one accent: each pair readable at MIN_TEXT_CONTRAST or better.

    `accent` fills buttons, with `on_accent` as their text; `accent_text` is the accent as
    links and focus rings on the white page (darkened when the accent itself is too light).
    """

    accent: str
    on_accent: str
    accent_text: str


def _channels(color: str) -> tuple[int, int, int]:
    match = _HEX.match(color)
    if match is None:
        raise ValueError(f"not a #rrggbb colour: {color!r}")
    digits = match.group(1)
    red, green, blue = (int(digits[i : i + 2], 16) for i in (0, 2, 4))
    return red, green, blue


def relative_luminance(color: str) -> float:
    """WCAG 2.x relative luminance of a #rrggbb colour (0 black .. 1 white)."""

    def linear(channel: int) -> float:
        value = channel / 255
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(channel) for channel in _channels(color))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two colours (1 .. 21)."""
    lighter, darker = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _darken(color: str, factor: float) -> str:
    red, green, blue = (round(channel * factor) for channel in _channels(color))
    return f"#{red:02x}{green:02x}{blue:02x}"


def palette(accent: str = "") -> Palette:
    """The Palette of an accent colour ("" or invalid: the portal's default)."""
    accent = accent.lower() if accent and _HEX.match(accent) else DEFAULT_ACCENT
    # Whichever of white and black reads better on the accent: for any colour one of the two
    # reaches 4.58:1 (the worst case is the luminance where both are equal, sqrt(21)).
    on_accent = max((WHITE, BLACK), key=lambda text: contrast(accent, text))
    accent_text = accent
    factor = 1.0
    while contrast(accent_text, WHITE) < MIN_TEXT_CONTRAST:
        factor -= 0.05
        accent_text = _darken(accent, factor)
    return Palette(accent=accent, on_accent=on_accent, accent_text=accent_text)


# Raster formats by their magic numbers; the type an upload claims is never believed.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def sniff_logo(data: bytes, *, max_bytes: int) -> str:
    """The content type of a logo image, or LogoRefused saying why it is not one.

    PNG, JPEG, GIF and WebP by their signatures; SVG only as well-formed XML with an <svg>
    root in the SVG namespace, no DOCTYPE or entities, and no <script> or event-handler
    attributes (the logo view also serves it with a sandboxing CSP).
    """
    if not data:
        raise LogoRefused("The file is empty.")
    if len(data) > max_bytes:
        raise LogoRefused(f"The logo may have at most {max_bytes // 1024} KB.")
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    _check_svg(data)
    return "image/svg+xml"


def _check_svg(data: bytes) -> None:
    refused = LogoRefused("Upload a PNG, JPEG, WebP, GIF or SVG image.")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise LogoRefused("SVG logos may not have a DOCTYPE or entities.")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        root = etree.fromstring(data, parser)
    except (etree.XMLSyntaxError, ValueError):
        raise refused from None
    if root.tag != f"{{{_SVG_NAMESPACE}}}svg":
        raise refused
    for element in root.iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag.rpartition("}")[2].lower() in {"script", "foreignobject"}:
            raise LogoRefused("SVG logos may not contain scripts or foreign objects.")
        for name, value in element.attrib.items():
            local = str(name).rpartition("}")[2].lower()
            if local.startswith("on") or "javascript:" in str(value).lower():
                raise LogoRefused("SVG logos may not contain scripts or event handlers.")


def ascii_name(name: str) -> str:
    """A person's name romanised to ASCII ("Łukasz Żółw" -> "Lukasz Zolw"), spaces kept."""
    return " ".join(anyascii(name).split())
