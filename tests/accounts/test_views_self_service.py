"""The self-service pages under /account/, driven as a browser without JavaScript would.

Plain form posts through Django's test client: every page works with nothing but HTML.
RELIABILITY.md checks 4 (web half), 15 and 17 for the pages; the browser itself:
tests/e2e/test_browser_self_service.py.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest
from django.test import Client

from accounts import web
from accounts.models import AccountSession, AccountStatus, MailAccount
from tests.accounts.conftest import MailServer
from tests.accounts.self_service import (
    CLEANSED,
    PAGES,
    PASSWORD,
    assert_report_keeps_out,
    hidden,
    logged_in,
    page_login,
    session_id,
    session_of,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_rate_limit")]
NEW_PASSWORD = "Nightingale-not-lark-7"


@pytest.fixture
def browser(owner: MailAccount) -> Client:
    """The owner, logged in through the login page."""
    client = Client()
    assert page_login(client, "juliet@example.org").status_code == HTTPStatus.SEE_OTHER
    return client


def csrf_of(client: Client) -> str:
    return hidden(client.get(PAGES), "csrf")


def snapshot(account: MailAccount) -> list[Any]:
    row = MailAccount.objects.filter(pk=account.pk).values_list("full_name", "password")
    return [list(row), sorted(AccountSession.objects.values_list("pk", "token_hash"))]


# ----- log in -------------------------------------------------------------------------------------


def test_overview_sends_a_visitor_without_session_to_the_login_page(client: Client) -> None:
    response = client.get(PAGES)
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == f"{PAGES}login"


def test_login_page_carries_a_login_token_in_the_form_and_a_cookie_for_its_path(
    client: Client, owner: MailAccount
) -> None:
    response = client.get(f"{PAGES}login")

    assert response.status_code == HTTPStatus.OK
    token = hidden(response, "login_token")
    cookie = response.cookies[web.login_cookie_name()]
    assert cookie.value == token
    assert (cookie["path"], cookie["httponly"], cookie["samesite"]) == (
        "/account/login",
        True,
        "Strict",
    )
    assert b"<script" not in response.content  # works without JavaScript: there is none
    policy = response["Content-Security-Policy"]  # portal.pages, as the registration pages
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "form-action 'self'" in policy and "unsafe-inline" not in policy
    assert "no-store" in response["Cache-Control"]


def test_logging_in_on_the_page_opens_the_overview(client: Client, owner: MailAccount) -> None:
    response = page_login(client, "juliet@example.org")

    assert response.status_code == HTTPStatus.SEE_OTHER
    assert response["Location"] == PAGES
    cookie = response.cookies[web.session_cookie_name()]
    assert (cookie["path"], cookie["httponly"], cookie["samesite"]) == ("/", True, "Strict")
    page = client.get(PAGES)
    assert page.status_code == HTTPStatus.OK
    text = page.content.decode()
    assert "juliet@example.org" in text
    assert "Juliet Capulet" in text
    assert "Example Mail" in text


def test_the_page_session_is_the_api_session(client: Client, owner: MailAccount) -> None:
    page_login(client, "juliet@example.org")
    response = client.get("/api/v1/account", HTTP_X_CSRF_TOKEN=csrf_of(client))
    assert response.json()["address"] == "juliet@example.org"


@pytest.mark.parametrize("case", ["no field", "no cookie", "other cookie", "used"])
def test_login_form_without_its_login_token_is_refused_and_offers_a_new_one(
    client: Client, owner: MailAccount, case: str
) -> None:
    page = client.get(f"{PAGES}login")
    form = {
        "login_token": hidden(page, "login_token"),
        "username": "juliet@example.org",
        "password": PASSWORD,
    }
    if case == "no field":
        del form["login_token"]
    elif case == "no cookie":
        del client.cookies[web.login_cookie_name()]
    elif case == "other cookie":
        client.cookies[web.login_cookie_name()] = secrets.token_urlsafe(32)
    else:
        assert client.post(f"{PAGES}login", form).status_code == HTTPStatus.SEE_OTHER
        client.cookies[web.login_cookie_name()] = form["login_token"]
        AccountSession.objects.all().delete()

    response = client.post(f"{PAGES}login", form)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not AccountSession.objects.exists()
    assert hidden(response, "login_token") != form.get("login_token")
    assert b'value="juliet@example.org"' in response.content  # the address is kept


def test_wrong_password_and_unknown_address_get_the_same_page(
    client: Client, owner: MailAccount
) -> None:
    wrong = page_login(client, "juliet@example.org", PASSWORD + "x")
    unknown = page_login(client, "nobody@example.org", PASSWORD)

    assert wrong.status_code == unknown.status_code == HTTPStatus.UNAUTHORIZED

    def message(response: Any) -> str:
        found = re.search(r'class="ss-error" role="alert">([^<]*)<', response.content.decode())
        assert found is not None
        return found.group(1)

    assert message(wrong) == message(unknown) == "Wrong address or password."
    assert PASSWORD.encode() not in wrong.content  # the password is never shown back


@pytest.mark.parametrize(
    "username", ["nobody@example.org", "juliet@example", "juliet@localhost", "juliet@-x-.org"]
)
def test_an_address_that_cannot_exist_gets_the_wrong_password_page(
    client: Client, owner: MailAccount, username: str
) -> None:
    response = page_login(client, username)

    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert "Wrong address or password." in response.content.decode()
    assert not AccountSession.objects.exists()


def test_a_login_token_field_with_non_ascii_characters_is_refused_not_a_crash(
    client: Client, owner: MailAccount
) -> None:
    client.get(f"{PAGES}login")
    form = {"login_token": "é", "username": "juliet@example.org", "password": PASSWORD}

    response = client.post(f"{PAGES}login", form)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not AccountSession.objects.exists()


def test_a_csrf_field_with_non_ascii_characters_is_refused_not_a_crash(
    browser: Client, owner: MailAccount
) -> None:
    before = snapshot(owner)

    response = browser.post(f"{PAGES}full-name", {"csrf": "é" * 64, "full_name": "Mallory"})

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert b"Nothing was changed" in response.content
    assert snapshot(owner) == before


@pytest.mark.parametrize("status", [AccountStatus.APPROVAL, AccountStatus.DISABLED])
def test_an_account_that_may_not_log_in_gets_no_session_from_the_page(
    client: Client, owner: MailAccount, status: str
) -> None:
    MailAccount.objects.filter(pk=owner.pk).update(status=status)

    response = page_login(client, "juliet@example.org")

    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert not AccountSession.objects.exists()
    assert client.get(PAGES).status_code == HTTPStatus.FOUND


def test_a_page_login_never_keeps_a_session_id_held_before(browser: Client) -> None:
    before = session_of(browser)
    # The login page redirects a logged-in visitor, so fetch the form elsewhere.
    form_page = Client().get(f"{PAGES}login")
    browser.cookies[web.login_cookie_name()] = hidden(form_page, "login_token")

    response = browser.post(
        f"{PAGES}login",
        {
            "login_token": hidden(form_page, "login_token"),
            "username": "juliet@example.org",
            "password": PASSWORD,
        },
    )

    assert response.status_code == HTTPStatus.SEE_OTHER
    assert session_of(browser) != before
    assert AccountSession.objects.count() == 1  # the one held before is gone


# ----- the overview -------------------------------------------------------------------------------


def test_overview_shows_usage_from_the_mail_server_and_the_set_up_links(
    client: Client, mail_server: MailServer, owner: MailAccount
) -> None:
    # The command backend (mail_server) made the mailbox with the provider's 1024 MB.
    mail_server.store("juliet@example.org", 256 * 1024 * 1024)
    page_login(client, "juliet@example.org")

    page = client.get(PAGES).content.decode()

    assert f'max="{1024 * 1024 * 1024}"' in page
    assert f'value="{256 * 1024 * 1024}"' in page
    assert "256.0\xa0MB of 1.0\xa0GB used (25%)" in page
    autoconfig = "/mail/config-v1.1.xml?emailaddress=juliet%40example.org"
    mobileconfig = "/mobileconfig?emailaddress=juliet%40example.org"
    assert f'href="{autoconfig}"' in page
    assert f'href="{mobileconfig}"' in page
    xml = client.get(autoconfig)
    assert xml.status_code == HTTPStatus.OK and b"imap.example.org" in xml.content
    assert client.get(mobileconfig).status_code == HTTPStatus.OK


def test_overview_says_when_usage_is_unknown(browser: Client, settings: Any) -> None:
    settings.DOVEADM_API_URL = ""
    page = browser.get(PAGES).content.decode()
    assert "cannot tell the storage used" in page
    assert "<meter" not in page


def test_full_name_form_saves_and_says_so(browser: Client, owner: MailAccount) -> None:
    response = browser.post(
        f"{PAGES}full-name", {"csrf": csrf_of(browser), "full_name": " Juliet M. "}
    )

    assert response.status_code == HTTPStatus.SEE_OTHER
    assert response["Location"] == f"{PAGES}?done=full-name"
    owner.refresh_from_db()
    assert owner.full_name == "Juliet M."
    assert "Your full name was saved." in browser.get(response["Location"]).content.decode()


def test_full_name_form_refuses_a_too_long_name_and_changes_nothing(
    browser: Client, owner: MailAccount
) -> None:
    before = snapshot(owner)
    response = browser.post(f"{PAGES}full-name", {"csrf": csrf_of(browser), "full_name": "x" * 201})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert b"ss-field-error" in response.content
    assert snapshot(owner) == before


def test_password_form_changes_it_and_ends_the_other_sessions(
    browser: Client, owner: MailAccount
) -> None:
    other = Client()
    logged_in(other, "juliet@example.org")
    form = {
        "csrf": csrf_of(browser),
        "current_password": PASSWORD,
        "password": NEW_PASSWORD,
        "password_again": NEW_PASSWORD,
    }

    response = browser.post(f"{PAGES}password", form)

    assert response.status_code == HTTPStatus.SEE_OTHER
    assert response["Location"] == f"{PAGES}?done=password"
    assert other.get("/api/v1/account").json()["code"] == "user:badAuth"
    assert browser.get(PAGES).status_code == HTTPStatus.OK
    assert page_login(Client(), "juliet@example.org", NEW_PASSWORD).status_code == 303


@pytest.mark.parametrize(
    ("current", "new", "again", "message"),
    [
        (PASSWORD + "x", NEW_PASSWORD, NEW_PASSWORD, "The current password is wrong."),
        (PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x", "The two new passwords differ."),
        (PASSWORD, "short", "short", "at least 8 characters"),
    ],
    ids=["wrong current", "differ", "short"],
)
def test_password_form_refusals_change_nothing(
    browser: Client, owner: MailAccount, current: str, new: str, again: str, message: str
) -> None:
    before = snapshot(owner)
    form = {
        "csrf": csrf_of(browser),
        "current_password": current,
        "password": new,
        "password_again": again,
    }

    response = browser.post(f"{PAGES}password", form)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert message in response.content.decode()
    assert snapshot(owner) == before
    assert PASSWORD.encode() not in response.content  # passwords are never shown back


def test_sessions_are_listed_and_another_can_be_ended(browser: Client, owner: MailAccount) -> None:
    other = Client(HTTP_USER_AGENT="Juliet's other browser")
    logged_in(other, "juliet@example.org")
    other_id = AccountSession.objects.exclude(user_agent="").get().pk
    page = browser.get(PAGES).content.decode()
    assert "Juliet&#x27;s other browser" in page
    assert "(this one)" in page

    response = browser.post(f"{PAGES}sessions/{other_id}/revoke", {"csrf": csrf_of(browser)})

    assert response.status_code == HTTPStatus.SEE_OTHER
    assert other.get("/api/v1/account").json()["code"] == "user:badAuth"
    assert browser.get(PAGES).status_code == HTTPStatus.OK


def test_ending_a_strangers_session_is_refused(
    browser: Client, owner: MailAccount, stranger: MailAccount
) -> None:
    romeo = Client()
    logged_in(romeo, "romeo@example.org")
    romeo_id = AccountSession.objects.get(account=stranger).pk

    response = browser.post(f"{PAGES}sessions/{romeo_id}/revoke", {"csrf": csrf_of(browser)})

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert romeo.get("/api/v1/account").status_code == HTTPStatus.OK


def test_logout_ends_the_session_and_the_old_cookie_opens_nothing(
    browser: Client, owner: MailAccount
) -> None:
    token = session_of(browser)

    response = browser.post(f"{PAGES}logout", {"csrf": csrf_of(browser)})

    assert response.status_code == HTTPStatus.SEE_OTHER
    assert response["Location"] == f"{PAGES}login?done=logout"
    assert response.cookies[web.session_cookie_name()]["max-age"] == 0
    assert not AccountSession.objects.exists()
    replay = Client()
    replay.cookies[web.session_cookie_name()] = token
    assert replay.get(PAGES).status_code == HTTPStatus.FOUND
    assert "You are logged out." in browser.get(response["Location"]).content.decode()


# ----- Error reports: no password, no token ------------------------------------------------------


def test_the_error_report_of_a_failing_page_login_holds_no_password_and_no_token(
    browser: Client,
    error_reports: Callable[[], str],
    hasher_breaks: Callable[[], None],
) -> None:
    held = session_of(browser)  # logging in again while logged in: the cookie goes along
    form_page = Client().get(f"{PAGES}login")
    token = hidden(form_page, "login_token")
    browser.cookies[web.login_cookie_name()] = token
    hasher_breaks()
    browser.raise_request_exception = False

    response = browser.post(
        f"{PAGES}login",
        {"login_token": token, "username": "juliet@example.org", "password": PASSWORD},
    )

    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    report = error_reports()
    assert_report_keeps_out(report, raised_in="log_in", secrets=(PASSWORD, token, held))
    assert f"password = '{CLEANSED}'" in report  # the POST section, cleansed


def test_the_error_report_of_a_failing_password_form_holds_no_password(
    browser: Client,
    error_reports: Callable[[], str],
    hasher_breaks: Callable[[], None],
) -> None:
    csrf = csrf_of(browser)
    hasher_breaks()
    browser.raise_request_exception = False
    form = {
        "csrf": csrf,
        "current_password": PASSWORD,
        "password": NEW_PASSWORD,
        "password_again": NEW_PASSWORD,
    }

    response = browser.post(f"{PAGES}password", form)

    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    report = error_reports()
    secrets_ = (PASSWORD, NEW_PASSWORD, session_of(browser), csrf)
    assert_report_keeps_out(report, raised_in="change_password", secrets=secrets_)
    assert f"current_password = '{CLEANSED}'" in report


# ----- CSRF matrix of the pages (RELIABILITY.md check 17) -----------------------------------------

FORMS = [
    ("full-name", {"full_name": "Mallory"}),
    ("password", {"current_password": PASSWORD, "password": "x" * 12, "password_again": "x" * 12}),
    ("sessions/{other}/revoke", {}),
    ("logout", {}),
]


@pytest.mark.parametrize("csrf_case", ["none", "bad", "good"])
@pytest.mark.parametrize("session_case", ["none", "bad", "good"])
@pytest.mark.parametrize(("path", "fields"), FORMS, ids=[path for path, _ in FORMS])
def test_only_a_good_session_with_its_good_csrf_field_gets_a_form_through(
    browser: Client,
    owner: MailAccount,
    session_case: str,
    csrf_case: str,
    path: str,
    fields: dict[str, str],
) -> None:
    other = Client()
    logged_in(other, "juliet@example.org")
    other_id = session_id(other)
    good_csrf = csrf_of(browser)
    attacker = Client()
    if session_case == "good":
        attacker.cookies[web.session_cookie_name()] = session_of(browser)
    elif session_case == "bad":
        attacker.cookies[web.session_cookie_name()] = secrets.token_urlsafe(32)
    form = dict(fields)
    if csrf_case == "good":
        form["csrf"] = good_csrf
    elif csrf_case == "bad":
        form["csrf"] = other.defaults["HTTP_X_CSRF_TOKEN"]  # another session's real value
    before = snapshot(owner)

    response = attacker.post(f"{PAGES}{path.format(other=other_id)}", form)

    if session_case == csrf_case == "good":
        assert response.status_code == HTTPStatus.SEE_OTHER
        assert snapshot(owner) != before  # and the form did its change
        return
    expected = HTTPStatus.FORBIDDEN if session_case == "good" else HTTPStatus.UNAUTHORIZED
    assert response.status_code == expected
    assert b"Nothing was changed" in response.content
    assert snapshot(owner) == before


@pytest.mark.parametrize(("path", "fields"), FORMS, ids=[path for path, _ in FORMS])
def test_a_form_posted_from_another_site_is_refused(
    browser: Client, owner: MailAccount, path: str, fields: dict[str, str]
) -> None:
    other = Client()
    logged_in(other, "juliet@example.org")
    other_id = session_id(other)
    form = {**fields, "csrf": csrf_of(browser)}
    before = snapshot(owner)

    response = browser.post(
        f"{PAGES}{path.format(other=other_id)}", form, HTTP_ORIGIN="https://evil.example"
    )

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert snapshot(owner) == before


def test_the_login_form_posted_from_another_site_is_refused(
    client: Client, owner: MailAccount
) -> None:
    response = page_login(client, "juliet@example.org", HTTP_ORIGIN="https://evil.example")
    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not AccountSession.objects.exists()


def test_pages_refuse_other_methods(browser: Client) -> None:
    assert browser.post(PAGES).status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert browser.get(f"{PAGES}logout").status_code == HTTPStatus.METHOD_NOT_ALLOWED


def test_the_pages_speak_german_to_a_german_browser(client: Client, owner: MailAccount) -> None:
    login = client.get(f"{PAGES}login", HTTP_ACCEPT_LANGUAGE="de")
    refused = page_login(client, "juliet@example.org", "wrong", HTTP_ACCEPT_LANGUAGE="de")
    page_login(client, "juliet@example.org", HTTP_ACCEPT_LANGUAGE="de")
    overview = client.get(PAGES, HTTP_ACCEPT_LANGUAGE="de").content.decode()

    assert 'lang="de"' in login.content.decode()
    assert "Anmelden" in login.content.decode()
    assert "Adresse oder Passwort falsch." in refused.content.decode()
    assert "Wo Sie angemeldet sind" in overview and "Passwort ändern" in overview


def test_refusals_speak_german_to_a_german_browser(
    browser: Client, owner: MailAccount, mail_server: MailServer
) -> None:
    foreign = browser.post(
        f"{PAGES}full-name",
        {"csrf": csrf_of(browser), "full_name": "Mallory"},
        HTTP_ORIGIN="https://evil.example",
        HTTP_ACCEPT_LANGUAGE="de",
    )
    assert "Diese Anfrage kam von der Seite einer anderen Website." in foreign.content.decode()


def test_a_refused_password_change_says_so_in_words_of_its_own_and_in_german(
    mail_server: MailServer, owner: MailAccount
) -> None:
    browser = Client()
    page_login(browser, "juliet@example.org")
    mail_server.lose("juliet@example.org")
    form = {"csrf": csrf_of(browser), "current_password": PASSWORD}
    form |= {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}

    response = browser.post(f"{PAGES}password", form, HTTP_ACCEPT_LANGUAGE="de")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    text = response.content.decode()
    assert "Ihr Passwort wurde nicht geändert" in text
    assert "no mailbox" not in text  # the mail server's own words stay in the log


def test_the_login_limit_answers_a_german_page_with_retry_after(
    owner: MailAccount, settings: Any, redis_client: Any
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.LOGIN_FAILURES_PER_IP_RATE = "1/m"
    client = Client(REMOTE_ADDR=f"2001:db8:{secrets.randbelow(0xFFFF):x}::1")
    assert page_login(client, "juliet@example.org", "wrong").status_code == 401

    response = page_login(client, "juliet@example.org", HTTP_ACCEPT_LANGUAGE="de")

    assert response.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert 0 < int(response["Retry-After"]) <= 70
    assert "Zu viele Fehlversuche" in response.content.decode()
    assert not AccountSession.objects.exists()


def test_the_pages_answer_503_while_the_database_is_down(
    owner: MailAccount, database_down: Callable[[], None]
) -> None:
    browser = Client(raise_request_exception=False)
    page_login(browser, "juliet@example.org")
    database_down()

    overview = browser.get(PAGES, HTTP_ACCEPT_LANGUAGE="de")
    login = page_login(Client(raise_request_exception=False), "juliet@example.org")

    assert overview.status_code == login.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert int(overview["Retry-After"]) > 0
    assert "Die Kontodatenbank ist nicht erreichbar" in overview.content.decode()


# ----- accessibility ---------------------------------------------------------------------------


def described_by(page: str, field: str) -> list[str]:
    """The texts of the elements the input `field` names in aria-describedby (each must exist)."""
    found = re.search(rf'<input[^>]*name="{field}"[^>]*>', page)
    assert found is not None, field
    named = re.search(r'aria-describedby="([^"]*)"', found.group(0))
    texts = []
    for ident in named.group(1).split() if named else []:
        element = re.search(rf'<(\w+)[^>]*id="{ident}"[^>]*>(.*?)</\1>', page, re.DOTALL)
        assert element is not None, f"{field}: aria-describedby names {ident}, not in the page"
        texts.append(re.sub(r"<[^>]+>", "", element.group(2)).strip())
    return texts


def test_a_fields_error_is_tied_to_its_input(browser: Client) -> None:
    form = {"csrf": csrf_of(browser), "current_password": PASSWORD + "x"}
    form |= {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}

    page = browser.post(f"{PAGES}password", form).content.decode()

    assert "The current password is wrong." in described_by(page, "current_password")
    current = re.search(r'<input[^>]*name="current_password"[^>]*>', page)
    assert current is not None
    assert 'aria-invalid="true"' in current.group(0)
    assert "autofocus" in current.group(0)  # without JavaScript, the cursor goes there
    assert described_by(page, "password") == [
        "At least 8 characters. Your other sessions and mail apps are logged out."
    ]


def test_each_end_button_names_its_session(browser: Client, owner: MailAccount) -> None:
    # Two buttons both called "End" say nothing to a screen reader: each is described by
    # its session's device cell.
    logged_in(Client(HTTP_USER_AGENT="Juliet's phone"), "juliet@example.org")
    page = browser.get(PAGES).content.decode()

    buttons = re.findall(r'<button[^>]*aria-describedby="([^"]*)"[^>]*>\s*(?:End|Log out)', page)
    devices = []
    for ident in buttons:
        cell = re.search(rf'<td id="{ident}">(.*?)</td>', page, re.DOTALL)
        assert cell is not None, ident
        devices.append(cell.group(1))
    assert len(devices) == 2
    assert any("Juliet&#x27;s phone" in device for device in devices)
