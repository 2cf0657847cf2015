"""The hosted registration pages in Debian's headless Chromium (Playwright), end to end.

A person arrives from a mail client with a taken address, picks an offered one, has a weak
password refused, then gets the clientConfig; its credentials log in to the real Dovecot.
Screenshots of each step land in the test's tmp dir (docs/registration.md shows two).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as DET
import pytest

from accounts.dovecot import PrivateDovecot
from accounts.services.accounts import create_account
from providers.models import Provider
from tests.e2e.registration import imap_logs_in

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

PASSWORD = "Balcony-at-midnight-42"
# Set to a folder (e.g. docs/images) to keep the screenshots there as well.
SCREENSHOTS = os.environ.get("REGISTRATION_SCREENSHOTS", "")


@pytest.fixture
def provider(make_provider: Callable[..., Provider], settings: Any) -> Provider:
    settings.RATELIMIT_ENABLE = False
    return make_provider(
        name="Demo Mail",
        accent_color="#2f6f4f",
        tos_url="https://example.org/tos",
        privacy_url="https://example.org/privacy",
    )


def shoot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"registration-{name}.png"), full_page=True)
    assert path.stat().st_size > 1000
    return path


@pytest.fixture
def taken(provider: Provider) -> None:
    """juliet@example.org exists already."""
    create_account(
        domain="example.org", local_part="juliet", password="Someone-elses-99", created_via="admin"
    )


# The database fixtures come before `page` in each signature: once Playwright's event loop
# runs, a query from the test's thread opens a connection in another context that nothing
# closes, and the test database could not be dropped at the end.


def test_a_person_registers_in_chromium_and_the_credentials_log_in_to_dovecot(
    taken: None, live_server: Any, dovecot: PrivateDovecot, page: Any, tmp_path: Path
) -> None:
    page.set_viewport_size({"width": 420, "height": 860})  # a phone, or a client's narrow tab
    page.goto(
        f"{live_server.url}/register/example/"
        "?email=juliet@example.org&first_name=Juliet&last_name=Capulet"
    )
    assert page.locator("#id_local_part").input_value() == "juliet"
    shoot(page, tmp_path, "1-address")

    page.get_by_role("button", name="Continue").click()
    error = page.locator("#id_local_part-errors")
    assert error.inner_text().strip().endswith("This address is already taken.")
    assert page.locator("#id_local_part").get_attribute("aria-invalid") == "true"
    alternative = page.get_by_role("button", name="juliet.capulet@example.org")
    shoot(page, tmp_path, "2-taken")

    alternative.click()
    assert page.locator(".chosen__address").inner_text() == "juliet.capulet@example.org"
    page.get_by_label("Password", exact=True).fill("password")
    page.get_by_label("Password again").fill("password")
    page.get_by_role("checkbox").check()
    page.get_by_role("button", name="Create my account").click()
    assert "This password is too common." in page.locator("#id_password-errors").inner_text()
    shoot(page, tmp_path, "3-weak-password")

    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("checkbox").check()
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Create my account").click()
    response = navigation.value
    shoot(page, tmp_path, "4-clientconfig")

    assert response.status == 200
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    assert response.headers["x-thunderbird-account-email"] == "juliet.capulet@example.org"
    assert response.headers["x-thunderbird-account-name"] == "Juliet Capulet"
    root = DET.fromstring(response.body())
    incoming = root.find("emailProvider/incomingServer")
    username, password = incoming.findtext("username"), incoming.findtext("password")
    assert (username, password) == ("juliet.capulet@example.org", PASSWORD)
    assert imap_logs_in(dovecot, username, password)
    assert not imap_logs_in(dovecot, username, PASSWORD + "x")


def test_cancel_in_chromium_ends_in_user_cancel(
    provider: Provider, live_server: Any, page: Any, tmp_path: Path
) -> None:
    page.goto(f"{live_server.url}/register/example/?email=romeo@example.org")

    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Cancel").click()

    response = navigation.value
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    assert DET.fromstring(response.body()).find("error").get("code") == "USER_CANCEL"
    shoot(page, tmp_path, "cancel")


def test_chromium_opens_a_raw_thunderbird_url_and_keeps_the_address(
    provider: Provider, live_server: Any, page: Any
) -> None:
    # Thunderbird's template filled by string replacement: "&" and "#" in a name stay raw.
    # The browser sends nothing after "#" (a fragment); static/js/registration.js puts it
    # back into the names.
    url = (
        f"{live_server.url}/register/example/"
        "?email=romeo@example.org&first_name=Romeo & Co#1&last_name=Montague"
    )
    page.goto(url)

    assert page.locator("#id_local_part").input_value() == "romeo"
    assert page.locator("#id_first_name").input_value() == "Romeo & Co#1"
    assert page.locator("#id_last_name").input_value() == "Montague"

    # Without JavaScript the server's part stands: the address, the name up to "#".
    context = page.context.browser.new_context(java_script_enabled=False)
    try:
        plain = context.new_page()
        plain.goto(url)
        assert plain.locator("#id_local_part").input_value() == "romeo"
        assert plain.locator("#id_first_name").input_value() == "Romeo & Co"
        assert plain.locator("#id_last_name").input_value() == ""
    finally:
        context.close()


def test_the_pages_are_german_in_a_german_browser(
    provider: Provider, live_server: Any, page: Any, tmp_path: Path
) -> None:
    context = page.context.browser.new_context(locale="de-DE")
    try:
        german = context.new_page()
        german.goto(f"{live_server.url}/register/example/?email=romeo@example.org")
        assert german.locator("html").get_attribute("lang") == "de"
        assert german.get_by_role("button", name="Weiter").is_visible()
        shoot(german, tmp_path, "german")
    finally:
        context.close()
