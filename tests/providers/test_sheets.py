"""Printable sheets: every card's code, printed to PDF and rasterised, decodes exactly."""

from __future__ import annotations

import io

import pypdfium2
import pytest
import zxingcpp
from PIL import Image

from providers import sheets


def pages(pdf: bytes, dpi: int = 200) -> list[Image.Image]:
    document = pypdfium2.PdfDocument(pdf)
    try:
        return [page.render(scale=dpi / 72).to_pil() for page in document]
    finally:
        document.close()


def decoded(image: Image.Image) -> list[str]:
    return sorted(result.text for result in zxingcpp.read_barcodes(image))


def card(index: int, **fields: object) -> sheets.Card:
    values: dict[str, object] = {
        "qr_text": f"dclogin:user{index:03d}@example.org?v=1&p=Pass%2B{index:03d}%26x",
        "title": f"user{index:03d}@example.org",
        "provider_name": "Example Mail",
        "instructions": sheets.INSTRUCTIONS["en"],
        **fields,
    }
    return sheets.Card(**values)  # type: ignore[arg-type]


def test_pdf_holds_eight_cards_a_page_and_each_code_decodes_exactly() -> None:
    cards = [card(index) for index in range(11)]

    images = pages(sheets.pdf(cards))

    assert len(images) == 2
    assert images[0].size == pytest.approx((1654, 2339), abs=2)  # A4 at 200 dpi
    found = decoded(images[0]) + decoded(images[1])
    assert found == sorted(item.qr_text for item in cards)


def test_poster_is_one_large_code_per_page() -> None:
    poster = card(1, title="Your new address at example.org")

    images = pages(sheets.pdf([poster, card(2)], poster=True), dpi=100)

    assert len(images) == 2
    assert decoded(images[0]) == [poster.qr_text]


def test_cards_print_names_in_any_script_and_a_logo() -> None:
    logo = io.BytesIO()
    Image.new("RGBA", (120, 40), (200, 30, 30, 255)).save(logo, format="PNG")
    cyrillic = card(1, provider_name="Почта Пример", logo_png=logo.getvalue())

    pdf = sheets.pdf([cyrillic])

    document = pypdfium2.PdfDocument(pdf)
    text = document[0].get_textpage().get_text_range()
    document.close()
    assert "Почта Пример" in text or "Pochta Primer" in text  # DejaVu, or transliterated
    assert "user001@example.org" in text
    assert decoded(pages(pdf)[0]) == [cyrillic.qr_text]


@pytest.mark.parametrize(
    ("languages", "expected"),
    [(["de-AT", "en"], "de"), (["fr", "de"], "de"), (["*"], "en"), (["fr"], "en"), ([], "en")],
)
def test_instructions_follow_the_providers_first_known_language(
    languages: list[str], expected: str
) -> None:
    assert sheets.language_of(languages) == expected
    assert sheets.instructions_for(languages) == sheets.INSTRUCTIONS[expected]
    assert all(len(lines) == 3 for lines in sheets.INSTRUCTIONS.values())


def test_printable_offers_the_code_as_inline_svg_and_png_and_svg_files() -> None:
    import base64

    item = sheets.printable("DCACCOUNT:https://portal.example.org/dcaccount/abc")

    assert item.svg.startswith("<svg ") and "<?xml" not in item.svg
    png = Image.open(io.BytesIO(base64.b64decode(item.png_base64)))
    assert decoded(png) == [item.text]
    assert base64.b64decode(item.svg_base64).startswith(b"<?xml")
