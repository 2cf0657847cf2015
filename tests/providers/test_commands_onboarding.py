"""Operators' commands: create_onboarding_token and onboarding_sheet."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pypdfium2
import pytest
import zxingcpp
from django.core.management import CommandError, call_command
from PIL import Image

from providers.models import OnboardingToken, Provider, token_digest
from providers.services import onboarding

pytestmark = pytest.mark.django_db


@pytest.fixture
def https(settings: Any) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example.org"


def create(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("create_onboarding_token", *args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_create_prints_the_dcaccount_code_on_the_last_line(
    https: None, make_provider: Callable[..., Provider]
) -> None:
    make_provider(domains=("example.org", "example.net"))

    lines = create(
        "--provider", "example", "--name", "class 7b", "--max-uses", "30",
        "--valid-for", "12h", "--account-lifetime", "2w", "--prefix", "7b.",
        "--domain", "example.net",
    )  # fmt: skip

    token = OnboardingToken.objects.get(name="class 7b")
    prefix = "DCACCOUNT:https://portal.example.org/dcaccount/"
    assert lines[-1].startswith(prefix)
    assert token_digest(lines[-1].removeprefix(prefix)) == token.token_sha256
    assert "30 uses on example.net" in lines[0] and "accounts live 2w" in lines[0]
    assert token.domain.name == "example.net" and token.prefix == "7b."
    assert token.account_lifetime is not None and token.account_lifetime.days == 14
    redeemed = onboarding.redeem_token(secret=lines[-1].removeprefix(prefix))
    assert redeemed.address.startswith("7b.") and redeemed.address.endswith("@example.net")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--valid-for", "forever"], "not a duration"),
        (["--provider", "nobody"], "No provider"),
        (["--domain", "other.example"], "no such domain"),
        (["--prefix", "a..b"], "not twice"),
    ],
)
def test_create_fails_with_a_reason_and_creates_nothing(
    https: None, make_provider: Callable[..., Provider], args: list[str], message: str
) -> None:
    make_provider()
    base = {"--provider": "example", "--name": "n", "--max-uses": "1", "--valid-for": "1d"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value

    with pytest.raises(CommandError, match=message):
        create(*[item for pair in base.items() for item in pair])
    assert not OnboardingToken.objects.exists()


def test_create_refuses_an_http_portal_before_creating_anything(
    make_provider: Callable[..., Provider], settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "http://127.0.0.1:8000"
    make_provider()

    with pytest.raises(CommandError, match="https PORTAL_BASE_URL"):
        create("--provider", "example", "--name", "n", "--max-uses", "1", "--valid-for", "1d")
    assert not OnboardingToken.objects.exists()


def sheet(monkeypatch: pytest.MonkeyPatch, stdin: str, *args: str) -> str:
    # The command reads the code like a pipe gives it (create_onboarding_token | tail -1 | ...).
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command("onboarding_sheet", *args, stdout=out)
    return out.getvalue()


def page_codes(path: Path) -> list[str]:
    document = pypdfium2.PdfDocument(path.read_bytes())
    try:
        image = document[0].render(scale=2).to_pil()
    finally:
        document.close()
    return [result.text for result in zxingcpp.read_barcodes(image)]


def test_sheet_writes_the_code_given_on_stdin_as_pdf_svg_and_png(
    https: None, make_token: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = make_token(name="fair", max_uses=40)
    code = issued.dcaccount_text()

    said = sheet(
        monkeypatch,
        f"token 'fair': ...\n{code}\n",
        "--token",
        "fair",
        "--out",
        str(tmp_path / "f.pdf"),
    )
    sheet(monkeypatch, code, "--token", "fair", "--out", str(tmp_path / "f.png"))
    sheet(monkeypatch, issued.secret, "--token", "fair", "--out", str(tmp_path / "f.svg"))

    assert "40 of 40 uses left" in said
    assert page_codes(tmp_path / "f.pdf") == [code]
    png = Image.open(tmp_path / "f.png")
    assert [result.text for result in zxingcpp.read_barcodes(png)] == [code]
    assert (tmp_path / "f.svg").read_bytes().startswith(b"<?xml")


def test_sheet_refuses_a_code_that_is_not_the_tokens(
    https: None, make_token: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_token(name="fair")
    other = make_token(name="other")

    with pytest.raises(CommandError, match="not the code"):
        sheet(
            monkeypatch, other.dcaccount_text(), "--token", "fair", "--out", str(tmp_path / "f.pdf")
        )
    assert not (tmp_path / "f.pdf").exists()


def test_sheet_with_a_new_secret_retires_the_old_code(
    https: None, make_token: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = make_token(name="fair")

    said = sheet(
        monkeypatch, "", "--token", "fair", "--new-secret", "--out", str(tmp_path / "f.pdf")
    )

    new_code = said.strip().splitlines()[-1]
    assert page_codes(tmp_path / "f.pdf") == [new_code]
    assert new_code != issued.dcaccount_text()
    with pytest.raises(onboarding.TokenUnknown):
        onboarding.redeem_token(secret=issued.secret)
