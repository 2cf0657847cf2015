"""DCLOGIN / DCACCOUNT texts and their images, read back by a real QR decoder (zxing-cpp)."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, unquote, urlsplit

import cairosvg
import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from providers import qr
from providers.autoconfig import Server

IMAP = Server("imap", "imap.example.org", 1993, "SSL", "password-cleartext", "%EMAILADDRESS%")
SMTP = Server("smtp", "mx.example.org", 2587, "STARTTLS", "password-cleartext", "%EMAILLOCALPART%")
HOSTILE = "a+b&c%d#e f=g?h/i\\j'k\"l<m>ü€🙂"


def decode_png(data: bytes) -> list[zxingcpp.Result]:
    return list(zxingcpp.read_barcodes(Image.open(io.BytesIO(data))))


def decode_svg(data: bytes) -> list[zxingcpp.Result]:
    return decode_png(cairosvg.svg2png(bytestring=data, output_width=600))


def query_of(text: str) -> dict[str, list[str]]:
    # What a reader does with the query: form-urlencoded, "+" is a space (specs/qr.md).
    return parse_qs(urlsplit(text).query, keep_blank_values=True, strict_parsing=True)


def test_dclogin_carries_every_server_key_from_the_settings() -> None:
    text = qr.dclogin_text(address="ann@example.org", password="secret-1", imap=IMAP, smtp=SMTP)

    assert text.startswith("dclogin:ann@example.org?v=1&p=")
    assert query_of(text) == {
        "v": ["1"],
        "p": ["secret-1"],
        "ih": ["imap.example.org"],
        "ip": ["1993"],
        "is": ["ssl"],
        "iu": ["ann@example.org"],
        "sh": ["mx.example.org"],
        "sp": ["2587"],
        "ss": ["starttls"],
        "su": ["ann"],
    }
    assert "sc=" not in text  # obsolete key, never emitted


@pytest.mark.parametrize("password", [HOSTILE, "+", "%2B", "&p=x", "#", " lead and trail ", "a=b"])
def test_dclogin_password_survives_form_decoding_exactly(password: str) -> None:
    text = qr.dclogin_text(address="ann@example.org", password=password, imap=IMAP, smtp=SMTP)

    assert query_of(text)["p"] == [password]
    assert " " not in text and "#" not in text and "+" not in text.partition("?")[2]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda value: "\x00" not in value))
def test_dclogin_any_password_round_trips(password: str) -> None:
    text = qr.dclogin_text(address="ann@example.org", password=password, imap=IMAP, smtp=SMTP)

    assert query_of(text)["p"] == [password]


def test_dclogin_keeps_the_address_readable() -> None:
    text = qr.dclogin_text(address="ann.b-c_d@example.org", password="x", imap=IMAP, smtp=SMTP)

    assert text.startswith("dclogin:ann.b-c_d@example.org?")
    assert unquote(text[len("dclogin:") : text.index("?")]) == "ann.b-c_d@example.org"


@pytest.mark.parametrize(
    ("socket_type", "value"), [("SSL", "ssl"), ("STARTTLS", "starttls"), ("plain", "plain")]
)
def test_dclogin_maps_each_socket_type(socket_type: str, value: str) -> None:
    imap = Server("imap", "h.example", 143, socket_type, "password-cleartext", "%EMAILADDRESS%")

    text = qr.dclogin_text(address="a@example.org", password="x", imap=imap, smtp=SMTP)

    assert query_of(text)["is"] == [value]


def test_dclogin_refuses_what_it_cannot_describe() -> None:
    pop3 = Server("pop3", "pop.example.org", 995, "SSL", "password-cleartext", "%EMAILADDRESS%")

    with pytest.raises(qr.QRFormatError, match="IMAP"):
        qr.dclogin_text(address="a@example.org", password="x", imap=pop3, smtp=SMTP)
    with pytest.raises(qr.QRFormatError, match="password"):
        qr.dclogin_text(address="a@example.org", password="", imap=IMAP, smtp=SMTP)
    with pytest.raises(qr.QRFormatError):
        qr.first_servers([pop3, SMTP])
    assert qr.first_servers([SMTP, pop3, IMAP]) == (IMAP, SMTP)


def test_first_servers_skip_servers_that_take_no_password() -> None:
    oauth_imap = Server("imap", "oauth.example.org", 993, "SSL", "OAuth2", "%EMAILADDRESS%")
    cert_smtp = Server("smtp", "cert.example.org", 465, "SSL", "TLS-client-cert", "%EMAILADDRESS%")

    assert qr.first_servers([oauth_imap, cert_smtp, IMAP, SMTP]) == (IMAP, SMTP)


def test_first_servers_refuse_clearly_when_no_server_takes_a_password() -> None:
    oauth_imap = Server("imap", "oauth.example.org", 993, "SSL", "OAuth2", "%EMAILADDRESS%")

    with pytest.raises(qr.QRFormatError, match=r"no IMAP server that takes a password.*OAuth2"):
        qr.first_servers([oauth_imap, SMTP])


def test_dcaccount_answer_has_what_delta_chat_and_mailadm_read() -> None:
    from datetime import timedelta

    temporary = qr.dcaccount_answer(
        address="tmp.k3x9@example.org", password=HOSTILE, lifetime=timedelta(days=30)
    )
    permanent = qr.dcaccount_answer(address="a@example.org", password="pw", lifetime=None)

    assert temporary == {
        "email": "tmp.k3x9@example.org",
        "password": HOSTILE,
        "expiry": "30d",
        "ttl": 2_592_000,
    }
    assert (permanent["expiry"], permanent["ttl"]) == ("never", None)


def test_dcaccount_refusal_always_has_a_reason_to_show() -> None:
    assert qr.dcaccount_refusal(code="token_unknown", reason="Not valid.") == {
        "reason": "Not valid.",
        "code": "token_unknown",
    }
    with pytest.raises(ValueError, match="reason"):
        qr.dcaccount_refusal(code="token_unknown", reason=" ")


def test_dcaccount_text_is_built_from_an_https_origin() -> None:
    assert (
        qr.dcaccount_text("https://portal.example.org/", "tok_en-1")
        == "DCACCOUNT:https://portal.example.org/dcaccount/tok_en-1"
    )


@pytest.mark.parametrize("base", ["http://portal.example.org", "http://127.0.0.1:8000", "ftp://x"])
def test_dcaccount_refuses_an_http_origin_with_a_clear_message(base: str) -> None:
    with pytest.raises(qr.QRFormatError, match="https PORTAL_BASE_URL"):
        qr.dcaccount_text(base, "token")


TEXTS = [
    "DCACCOUNT:https://portal.example.org/dcaccount/" + "Ab-_9" * 6 + "xy",
    qr.dclogin_text(address="ann@example.org", password=HOSTILE, imap=IMAP, smtp=SMTP),
]


@pytest.mark.parametrize("text", TEXTS)
def test_png_decodes_to_exactly_the_text_with_error_correction_m(text: str) -> None:
    results = decode_png(qr.png(text))

    assert [result.text for result in results] == [text]
    assert results[0].format == zxingcpp.BarcodeFormat.QRCode
    assert results[0].ec_level == "M"


@pytest.mark.parametrize("text", TEXTS)
def test_svg_rendered_to_png_decodes_to_exactly_the_text(text: str) -> None:
    assert [result.text for result in decode_svg(qr.svg(text))] == [text]


def test_codes_have_a_quiet_zone_of_four_modules() -> None:
    modules = qr.matrix(TEXTS[1])

    border = [row[:4] + row[-4:] for row in modules] + modules[:4] + modules[-4:]
    assert not any(any(row) for row in border)
    assert any(modules[4])  # the code starts right after it
