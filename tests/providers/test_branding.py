"""Pure: a provider's colours and logo (providers.branding)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers import branding

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


@given(st.integers(min_value=0, max_value=0xFFFFFF).map(lambda n: f"#{n:06x}"))
def test_every_accent_yields_readable_button_text_and_links(accent: str) -> None:
    palette = branding.palette(accent)

    assert palette.accent == accent
    assert branding.contrast(palette.accent, palette.on_accent) >= branding.MIN_TEXT_CONTRAST
    assert branding.contrast(palette.accent_text, branding.WHITE) >= branding.MIN_TEXT_CONTRAST


def test_a_dark_accent_keeps_itself_for_links_and_gets_white_text() -> None:
    palette = branding.palette("#0B5CAD")

    assert palette == branding.Palette("#0b5cad", branding.WHITE, "#0b5cad")


@pytest.mark.parametrize("value", ["", "red", "#fff", "#12345g"])
def test_no_or_a_malformed_accent_means_the_portals_own(value: str) -> None:
    assert branding.palette(value).accent == branding.DEFAULT_ACCENT


def test_contrast_of_black_on_white_is_21() -> None:
    assert round(branding.contrast("#000000", "#ffffff"), 2) == 21.0


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "image/jpeg"),
        (b"GIF89a" + b"\x00" * 20, "image/gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8, "image/webp"),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 4 4"><rect width="4" '
            b'height="4" fill="#0b5cad"/></svg>',
            "image/svg+xml",
        ),
    ],
)
def test_sniff_logo_recognises_images_by_their_bytes(data: bytes, content_type: str) -> None:
    assert branding.sniff_logo(data, max_bytes=1024) == content_type


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (PNG + b"\x00" * 2000, "at most 1 KB"),
        (b"%PDF-1.7", "Upload a PNG"),
        (b"<html xmlns='http://www.w3.org/1999/xhtml'/>", "Upload a PNG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "scripts"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "event handlers"),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:x="http://www.w3.org/1999/xlink">'
            b'<a x:href="javascript:alert(1)"/></svg>',
            "scripts",
        ),
        (b'<!DOCTYPE svg [<!ENTITY x "y">]><svg xmlns="http://www.w3.org/2000/svg"/>', "DOCTYPE"),
    ],
)
def test_sniff_logo_refuses_what_is_not_a_safe_image(data: bytes, reason: str) -> None:
    with pytest.raises(branding.LogoRefused, match=reason):
        branding.sniff_logo(data, max_bytes=1024)


def test_ascii_name_romanises_what_latin_1_cannot_carry() -> None:
    assert branding.ascii_name("Łukasz  Żółw") == "Lukasz Zolw"
