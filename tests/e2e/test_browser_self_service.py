"""Headless Chromium on the live portal: log in, change the full name, log out (/account/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from accounts.models import AccountSession, MailAccount
from accounts.services.accounts import create_account
from providers.models import Provider

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]
PASSWORD = "Balcony-at-midnight-42"


@pytest.fixture
def browser_db(chromium: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Database queries from the test beside Chromium (as the `page` fixture allows them).

    Playwright's event loop runs in this thread, so Django keeps a connection of its own for
    the test (asgiref's context-local storage): closed at the end, or the test database
    could not be dropped.
    """
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    yield
    connections.close_all()


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript on", "javascript off"])
def test_owner_logs_in_changes_the_full_name_and_logs_out_in_chromium(
    chromium: Any,
    live_server: Any,
    make_provider: Any,
    settings: Any,
    tmp_path: Path,
    browser_db: None,
    javascript: bool,
) -> None:
    settings.RATELIMIT_ENABLE = False  # other tests' logins from 127.0.0.1 share the counters
    provider: Provider = make_provider()
    account = create_account(
        domain="example.org", local_part="juliet", password=PASSWORD, created_via="admin"
    )
    context = chromium.new_context(locale="en-US", java_script_enabled=javascript)
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/account/")
        assert page.url == f"{live_server.url}/account/login"
        page.get_by_label("Mail address").fill("juliet@example.org")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()

        page.wait_for_url(f"{live_server.url}/account/")
        assert page.get_by_role("heading", name="juliet@example.org").is_visible()
        assert provider.name in page.content()
        cookies = {cookie["name"]: cookie for cookie in context.cookies()}
        session_cookie = cookies["mailportal_session"]
        assert session_cookie["httpOnly"] is True
        assert session_cookie["sameSite"] == "Strict"
        assert session_cookie["path"] == "/"
        # The login token's cookie was scoped to the login path and is spent.
        assert "mailportal_login" not in cookies

        page.get_by_role("textbox", name="Full name").fill("Juliet Capulet")
        page.get_by_role("button", name="Save name").click()
        page.wait_for_url(f"{live_server.url}/account/?done=full-name")
        assert page.get_by_text("Your full name was saved.").is_visible()
        assert page.get_by_role("textbox", name="Full name").input_value() == "Juliet Capulet"
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
        assert (tmp_path / "overview.png").stat().st_size > 5000

        page.locator("header").get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{live_server.url}/account/login?done=logout")
        assert page.get_by_text("You are logged out.").is_visible()
        assert "mailportal_session" not in {cookie["name"] for cookie in context.cookies()}
    finally:
        context.close()

    account.refresh_from_db()
    assert account.full_name == "Juliet Capulet"
    assert not AccountSession.objects.filter(account=account).exists()
    assert MailAccount.objects.count() == 1
