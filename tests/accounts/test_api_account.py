"""The account API under /api/v1/account (specs/account-api.md).

RELIABILITY.md checks 4 (web half: only active, ready accounts log in), 13 (login brute
force), 15 (fixation, logout, disabling), 16 (password change semantics; the IMAP half is in
tests/e2e/test_self_service_dovecot.py) and 17 (the CSRF matrix, content types, Origin).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import argon2
import pytest
import time_machine
from django.db import connection, connections, transaction
from django.test import Client

from accounts import web
from accounts.models import AccountSession, AccountStatus, MailAccount, MailboxState
from accounts.services.accounts import set_status
from accounts.services.sessions import token_hash
from tests.accounts.conftest import MailServer
from tests.accounts.self_service import (
    API,
    PAGES,
    PASSWORD,
    api_login,
    assert_report_keeps_out,
    hidden,
    logged_in,
    page_login,
    post_json,
    session_id,
    session_of,
)
from tests.conftest import need_service

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_rate_limit")]
NEW_PASSWORD = "Nightingale-not-lark-7"


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 verification made, counted where the hasher library runs it.

    argon2-cffi is a third party: wrapping its verify (which still runs) is no stand-in for
    our own code, and it counts what the issue asks for: how often the hasher runs.
    """
    calls: list[str] = []
    real = argon2.PasswordHasher.verify

    def counting(self: argon2.PasswordHasher, hash: str, password: str) -> bool:
        calls.append(hash)
        return bool(real(self, hash, password))

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting)
    return calls


def new_ip() -> str:
    """A client address (its own /64) no earlier run has counted: Redis keeps counters."""
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"


def snapshot(*accounts: MailAccount) -> list[Any]:
    """What a refused request must leave as it was: names, hashes, sessions."""
    rows = MailAccount.objects.filter(pk__in=[a.pk for a in accounts]).order_by("pk")
    return [
        list(rows.values_list("full_name", "password", "status")),
        sorted(AccountSession.objects.values_list("pk", "token_hash", "account_id")),
    ]


# ----- LoginPrep and Login ------------------------------------------------------------------------


def test_login_prep_answers_a_token_and_sets_it_as_a_cookie_scoped_to_login(
    client: Client, owner: MailAccount
) -> None:
    response = post_json(client, f"{API}/login-prep")

    assert response.status_code == HTTPStatus.OK
    token = response.json()["loginToken"]
    assert len(token) >= 43  # 256 bits, base64url
    cookie = response.cookies[web.login_cookie_name()]
    assert cookie.value == token
    assert cookie["path"] == "/api/v1/account/login"
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["domain"] == ""
    assert response["Cache-Control"].startswith("max-age=0")
    assert "no-store" in response["Cache-Control"]


def test_login_answers_a_csrf_token_and_sets_an_http_only_strict_session_cookie(
    client: Client, owner: MailAccount
) -> None:
    response = api_login(client, "juliet@example.org")

    assert response.status_code == HTTPStatus.OK
    assert set(response.json()) == {"csrfToken"}
    cookie = response.cookies[web.session_cookie_name()]
    assert web.session_cookie_name() == "mailportal_session"  # plain http: no __Host- prefix
    assert (cookie["path"], cookie["domain"], cookie["httponly"], cookie["samesite"]) == (
        "/",
        "",
        True,
        "Strict",
    )
    assert cookie["secure"] == ""  # http here; https: tests/portal/test_headers.py
    assert cookie["expires"] == "" and cookie["max-age"] == ""  # ends with the browser
    # The login cookie is spent and cleared.
    assert response.cookies[web.login_cookie_name()]["max-age"] == 0
    session = AccountSession.objects.get()
    assert session.token_hash == hashlib.sha256(cookie.value.encode()).hexdigest()
    assert session.account_id == owner.pk
    assert session.ip == "127.0.0.1"


def test_login_accepts_the_address_in_any_case(client: Client, owner: MailAccount) -> None:
    assert api_login(client, " Juliet@Example.ORG ").status_code == HTTPStatus.OK


@pytest.mark.parametrize(
    "case", ["no cookie", "cookie of another token", "reused token", "no token", "expired token"]
)
def test_login_refused_without_a_valid_login_token_before_credentials_are_checked(
    client: Client, owner: MailAccount, verifications: list[str], settings: Any, case: str
) -> None:
    token = post_json(client, f"{API}/login-prep").json()["loginToken"]
    body = {"loginToken": token, "username": "juliet@example.org", "password": PASSWORD}
    if case == "no cookie":
        del client.cookies[web.login_cookie_name()]
    elif case == "cookie of another token":
        other = Client()
        post_json(other, f"{API}/login-prep")
        client.cookies[web.login_cookie_name()] = other.cookies[web.login_cookie_name()].value
    elif case == "reused token":
        assert post_json(client, f"{API}/login", body).status_code == HTTPStatus.OK
        client.cookies[web.login_cookie_name()] = token  # the client replays both
        verifications.clear()
    elif case == "no token":
        body["loginToken"] = ""
    else:
        settings.LOGIN_TOKEN_SECONDS = 1
        body["loginToken"] = post_json(client, f"{API}/login-prep").json()["loginToken"]
        time.sleep(1.5)  # the cache's own clock (Redis) decides: wait it out for real
    sessions_before = AccountSession.objects.count()

    response = post_json(client, f"{API}/login", body)

    expected = HTTPStatus.BAD_REQUEST if case == "no token" else HTTPStatus.FORBIDDEN
    assert response.status_code == expected
    assert response.json()["code"] == ("user:error" if case == "no token" else "user:csrf")
    assert verifications == []  # the password was never looked at
    assert AccountSession.objects.count() == sessions_before


def test_unknown_user_and_wrong_password_get_the_same_answer_and_one_hash_each(
    client: Client, owner: MailAccount, verifications: list[str]
) -> None:
    answers = []
    for username, password in [
        ("nobody@example.org", PASSWORD),
        ("juliet@example.org", PASSWORD + "x"),
        ("not an address", PASSWORD),
        # Domains that are no domain name (a typo, a label too long): no 500 either.
        ("juliet@example", PASSWORD),
        ("juliet@localhost", PASSWORD),
        ("juliet@" + "ü" * 70 + ".org", PASSWORD),
        ("juliet@-bad-.org", PASSWORD),
    ]:
        verifications.clear()
        response = api_login(client, username, password)
        answers.append((response.status_code, response.content))
        assert len(verifications) == 1, username

    assert all(answer == answers[0] for answer in answers)
    assert answers[0][0] == HTTPStatus.UNAUTHORIZED
    assert b'"user:badLogin"' in answers[0][1]
    assert not AccountSession.objects.exists()


@pytest.mark.parametrize(
    "change",
    [
        {"status": AccountStatus.APPROVAL},
        {"status": AccountStatus.PENDING},
        {"status": AccountStatus.DISABLED},
        {"mailbox_state": MailboxState.CREATING},
        {"mailbox_state": MailboxState.DELETING},
    ],
    ids=lambda change: next(iter(change.values())),
)
def test_only_active_ready_accounts_log_in(
    client: Client, owner: MailAccount, verifications: list[str], change: dict[str, str]
) -> None:
    MailAccount.objects.filter(pk=owner.pk).update(**change)

    response = api_login(client, "juliet@example.org")

    # RELIABILITY.md check 4, web half: the right password, still no session.
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response.json()["code"] == "user:badLogin"
    assert "cannot log in" in response.json()["message"]
    assert len(verifications) == 1
    assert not AccountSession.objects.exists()
    # A wrong password to such an account gets the plain answer: nothing tells more.
    wrong = api_login(client, "juliet@example.org", PASSWORD + "x")
    assert wrong.json() == api_login(client, "nobody@example.org").json()


def test_login_folds_the_name_as_registration_stores_it(client: Client, owner: MailAccount) -> None:
    # Registration stores user names NFKC-folded (accounts.services.names): "juliet" typed
    # with a full-width J registered "juliet", so typing it the same way at login finds it.
    assert api_login(client, "\uff2auliet@example.org").status_code == HTTPStatus.OK


@pytest.mark.parametrize("where", ["value", "cookie"])
def test_a_login_token_with_non_ascii_characters_is_refused_not_a_crash(
    client: Client, owner: MailAccount, verifications: list[str], where: str
) -> None:
    token = post_json(client, f"{API}/login-prep").json()["loginToken"]
    body = {"loginToken": token, "username": "juliet@example.org", "password": PASSWORD}
    if where == "value":
        body["loginToken"] = "é" + token[1:]
    else:
        client.cookies[web.login_cookie_name()] = "é" + token[1:]

    response = post_json(client, f"{API}/login", body)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.json()["code"] == "user:csrf"
    assert verifications == []
    assert not AccountSession.objects.exists()


def test_a_user_agent_the_database_cannot_store_is_cleaned_not_a_crash(
    owner: MailAccount,
) -> None:
    # gunicorn refuses NUL in a header, but other servers (and runserver) pass it on.
    client = Client(HTTP_USER_AGENT="Phone\x00 Mail\x07 1.0")

    response = api_login(client, "juliet@example.org")

    assert response.status_code == HTTPStatus.OK
    assert AccountSession.objects.get().user_agent == "Phone Mail 1.0"


def test_login_while_holding_a_session_replaces_it(client: Client, owner: MailAccount) -> None:
    before = logged_in(client, "juliet@example.org")

    after = logged_in(client, "juliet@example.org")

    # RELIABILITY.md check 15: no session id survives a login.
    assert after != before
    assert AccountSession.objects.count() == 1
    stale = Client(HTTP_X_CSRF_TOKEN=client.defaults["HTTP_X_CSRF_TOKEN"])
    stale.cookies[web.session_cookie_name()] = before
    assert stale.get(API).json()["code"] == "user:badAuth"


# ----- CSRF, session and content-type checks (RELIABILITY.md check 17) ----------------------------

# (method, path, body) of every call that needs a session; {other} is another session's id.
CALLS = [
    ("get", API, None),
    ("get", f"{API}/sessions", None),
    ("post", f"{API}/logout", None),
    ("post", f"{API}/full-name", {"fullName": "Mallory"}),
    ("post", f"{API}/password", {"currentPassword": PASSWORD, "password": NEW_PASSWORD}),
    ("delete", f"{API}/sessions/{{other}}", None),
]


def call(client: Client, method: str, path: str, body: Any, **extra: Any) -> Any:
    if method == "get":
        return client.get(path, **extra)
    if method == "delete":
        return client.delete(path, content_type="application/json", **extra)
    return post_json(client, path, body, **extra)


@pytest.fixture
def two_sessions(owner: MailAccount) -> Iterator[tuple[Client, Client]]:
    """The owner logged in twice: `mine` makes the calls, `other` is there to be revoked."""
    mine, other = Client(), Client()
    logged_in(mine, "juliet@example.org")
    logged_in(other, "juliet@example.org")
    yield mine, other


def test_a_session_call_without_the_csrf_header_is_refused_and_with_it_works(
    two_sessions: tuple[Client, Client],
) -> None:
    mine, _other = two_sessions
    csrf = mine.defaults.pop("HTTP_X_CSRF_TOKEN")

    refused = mine.get(API)
    works = mine.get(API, HTTP_X_CSRF_TOKEN=csrf)

    assert refused.status_code == HTTPStatus.FORBIDDEN
    assert refused.json()["code"] == "user:csrf"
    assert works.status_code == HTTPStatus.OK


@pytest.mark.parametrize(
    "value", ["é", "ü" * 64, "\u2603"], ids=["latin-1", "64 latin-1", "beyond latin-1"]
)
def test_a_csrf_header_with_non_ascii_characters_is_refused_not_a_crash(
    two_sessions: tuple[Client, Client], owner: MailAccount, value: str
) -> None:
    mine, _other = two_sessions
    before = snapshot(owner)

    response = post_json(mine, f"{API}/full-name", {"fullName": "Mallory"}, HTTP_X_CSRF_TOKEN=value)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.json()["code"] == "user:csrf"
    assert snapshot(owner) == before


@pytest.mark.parametrize("csrf_case", ["none", "bad", "good"])
@pytest.mark.parametrize("session_case", ["none", "bad", "good"])
@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
def test_only_a_good_session_with_its_good_csrf_value_gets_through(
    two_sessions: tuple[Client, Client],
    owner: MailAccount,
    session_case: str,
    csrf_case: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    mine, other = two_sessions
    good_token, good_csrf = session_of(mine), mine.defaults["HTTP_X_CSRF_TOKEN"]
    other_id = session_id(other)
    attacker = Client()
    if session_case == "good":
        attacker.cookies[web.session_cookie_name()] = good_token
    elif session_case == "bad":
        attacker.cookies[web.session_cookie_name()] = secrets.token_urlsafe(32)
    extra = {}
    if csrf_case == "good":
        extra["HTTP_X_CSRF_TOKEN"] = good_csrf
    elif csrf_case == "bad":
        extra["HTTP_X_CSRF_TOKEN"] = other.defaults["HTTP_X_CSRF_TOKEN"]  # a real one, not ours
    before = snapshot(owner)

    response = call(attacker, method, path.format(other=other_id), body, **extra)

    if session_case == csrf_case == "good":
        assert response.status_code in {HTTPStatus.OK, HTTPStatus.NO_CONTENT}
        # and it did what it says: a read changes nothing, every other call something
        assert (snapshot(owner) == before) == (method == "get")
        return
    expected = {"none": "user:noAuth", "bad": "user:badAuth"}.get(session_case, "user:csrf")
    assert response.json()["code"] == expected
    assert response.status_code == (
        HTTPStatus.FORBIDDEN if expected == "user:csrf" else HTTPStatus.UNAUTHORIZED
    )
    assert snapshot(owner) == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [*CALLS[2:], ("post", f"{API}/login-prep", None), ("post", f"{API}/login", {})],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_json_endpoints_refuse_form_and_text_bodies_with_415(
    two_sessions: tuple[Client, Client],
    owner: MailAccount,
    content_type: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    mine, other = two_sessions
    other_id = session_id(other)
    before = snapshot(owner)

    response = getattr(mine, method)(
        path.format(other=other_id), data="fullName=Mallory", content_type=content_type
    )

    assert response.status_code == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert response.json()["code"] == "user:error"
    assert snapshot(owner) == before


@pytest.mark.parametrize(
    "header",
    [
        {"HTTP_ORIGIN": "https://evil.example"},
        {"HTTP_ORIGIN": "null"},
        {"HTTP_ORIGIN": "http://testserver.evil.example"},
        {"HTTP_SEC_FETCH_SITE": "cross-site"},
        {"HTTP_SEC_FETCH_SITE": "same-site"},
    ],
    ids=lambda header: next(iter(header.values())),
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [*CALLS, ("post", f"{API}/login-prep", None)],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_request_from_another_site_is_refused_with_403(
    two_sessions: tuple[Client, Client],
    owner: MailAccount,
    header: dict[str, str],
    method: str,
    path: str,
    body: Any,
) -> None:
    mine, other = two_sessions
    other_id = session_id(other)
    before = snapshot(owner)

    response = call(mine, method, path.format(other=other_id), body, **header)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.json()["code"] == "user:csrf"
    assert snapshot(owner) == before


def test_login_from_another_site_is_refused_before_credentials(
    client: Client, owner: MailAccount, verifications: list[str]
) -> None:
    token = post_json(client, f"{API}/login-prep").json()["loginToken"]
    body = {"loginToken": token, "username": "juliet@example.org", "password": PASSWORD}

    response = post_json(client, f"{API}/login", body, HTTP_ORIGIN="https://evil.example")

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert verifications == []
    assert not AccountSession.objects.exists()


def test_own_origin_is_accepted(two_sessions: tuple[Client, Client]) -> None:
    mine, _other = two_sessions
    response = mine.get(API, HTTP_ORIGIN="http://testserver", HTTP_SEC_FETCH_SITE="same-origin")
    assert response.status_code == HTTPStatus.OK


# ----- Logout, expiry, disabling (RELIABILITY.md check 15) ----------------------------------------


def test_logout_ends_the_session_and_its_cookie_is_refused_afterwards(
    client: Client, owner: MailAccount
) -> None:
    token = logged_in(client, "juliet@example.org")
    csrf = client.defaults["HTTP_X_CSRF_TOKEN"]

    response = post_json(client, f"{API}/logout")

    assert response.status_code == HTTPStatus.NO_CONTENT
    assert response.cookies[web.session_cookie_name()]["max-age"] == 0
    assert not AccountSession.objects.filter(token_hash=token_hash(token)).exists()
    replay = Client(HTTP_X_CSRF_TOKEN=csrf)
    replay.cookies[web.session_cookie_name()] = token
    refused = replay.get(API)
    assert refused.status_code == HTTPStatus.UNAUTHORIZED
    assert refused.json()["code"] == "user:badAuth"


def test_sessions_are_extended_on_use_and_end_after_the_idle_time(
    client: Client, owner: MailAccount, settings: Any
) -> None:
    settings.ACCOUNT_SESSION_IDLE_SECONDS = 600
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        logged_in(client, "juliet@example.org")
    with time_machine.travel(start + timedelta(seconds=590), tick=False):
        assert client.get(API).status_code == HTTPStatus.OK  # used: moved forward
    with time_machine.travel(start + timedelta(seconds=1150), tick=False):
        assert client.get(API).status_code == HTTPStatus.OK  # 560 s after the last use
    with time_machine.travel(start + timedelta(seconds=1150 + 601), tick=False):
        response = client.get(API)
    assert response.json()["code"] == "user:badAuth"
    assert not AccountSession.objects.exists()


def test_sessions_end_at_their_maximum_age_however_busy(
    client: Client, owner: MailAccount, settings: Any
) -> None:
    settings.ACCOUNT_SESSION_IDLE_SECONDS = 600
    settings.ACCOUNT_SESSION_MAX_SECONDS = 1000
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        logged_in(client, "juliet@example.org")
    for seconds in (300, 600, 900):
        with time_machine.travel(start + timedelta(seconds=seconds), tick=False):
            assert client.get(API).status_code == HTTPStatus.OK
    with time_machine.travel(start + timedelta(seconds=1001), tick=False):
        assert client.get(API).json()["code"] == "user:badAuth"


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_session_ended_while_its_request_runs_answers_bad_auth_not_500(
    owner: MailAccount,
) -> None:
    # The request has read its session and is about to move its expiry forward when a
    # logout elsewhere (or a revoke, a password change) deletes the row.
    if connection.vendor != "postgresql":
        need_service("PostgreSQL", "the race needs a connection that waits for a row lock")
    client = Client(raise_request_exception=False)
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        logged_in(client, "juliet@example.org")
    answers: list[Any] = []

    def call() -> None:
        try:
            answers.append(client.get(API))
        finally:
            connections.close_all()

    thread = threading.Thread(target=call)
    with time_machine.travel(start + timedelta(minutes=5), tick=False):  # due for a move
        with transaction.atomic():
            AccountSession.objects.select_for_update().get()
            thread.start()
            wait_for_lock_waiters(1)
            AccountSession.objects.all().delete()
        thread.join(timeout=60)

    [response] = answers
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response.json()["code"] == "user:badAuth"


def test_disabling_an_account_ends_its_sessions_at_the_next_request(
    client: Client, owner: MailAccount, stranger: MailAccount
) -> None:
    logged_in(client, "juliet@example.org")
    bystander = Client()
    logged_in(bystander, "romeo@example.org")

    set_status(account=owner, status=AccountStatus.DISABLED)

    response = client.get(API)
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response.json()["code"] == "user:badAuth"
    assert not AccountSession.objects.filter(account=owner).exists()
    assert bystander.get(API).status_code == HTTPStatus.OK


def test_a_status_changed_behind_the_services_back_still_ends_the_session(
    client: Client, owner: MailAccount
) -> None:
    logged_in(client, "juliet@example.org")
    MailAccount.objects.filter(pk=owner.pk).update(status=AccountStatus.DISABLED)

    assert client.get(API).json()["code"] == "user:badAuth"
    assert not AccountSession.objects.exists()


def test_deleting_an_account_deletes_its_sessions(client: Client, owner: MailAccount) -> None:
    from accounts.services.accounts import delete_account

    logged_in(client, "juliet@example.org")
    delete_account(account=owner)

    assert client.get(API).json()["code"] == "user:badAuth"
    assert not AccountSession.objects.exists()


# ----- SetPassword (RELIABILITY.md check 16) ------------------------------------------------------


def set_password(client: Client, current: str, new: str) -> Any:
    return post_json(client, f"{API}/password", {"currentPassword": current, "password": new})


def test_set_password_ends_every_other_session_and_this_one_continues(
    two_sessions: tuple[Client, Client], owner: MailAccount
) -> None:
    mine, other = two_sessions

    response = set_password(mine, PASSWORD, NEW_PASSWORD)

    assert response.status_code == HTTPStatus.NO_CONTENT
    refused = other.get(API)
    assert refused.status_code == HTTPStatus.UNAUTHORIZED
    assert refused.json()["code"] == "user:badAuth"
    assert mine.get(API).status_code == HTTPStatus.OK
    assert AccountSession.objects.count() == 1
    assert api_login(Client(), "juliet@example.org", PASSWORD).status_code == 401
    assert api_login(Client(), "juliet@example.org", NEW_PASSWORD).status_code == 200


def test_set_password_changes_nothing_when_the_mail_server_refuses(
    mail_server: MailServer, two_sessions: tuple[Client, Client], owner: MailAccount
) -> None:
    mine, other = two_sessions
    mail_server.lose("juliet@example.org")
    before = snapshot(owner)

    response = set_password(mine, PASSWORD, NEW_PASSWORD)

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["code"] == "server:error"
    assert response.json()["message"].startswith("Your password was not changed")
    assert "no mailbox" not in response.json()["message"]  # the program's stderr: logged only
    assert snapshot(owner) == before  # the hash, and every session
    assert other.get(API).status_code == HTTPStatus.OK
    assert mine.get(API).status_code == HTTPStatus.OK
    assert api_login(Client(), "juliet@example.org", PASSWORD).status_code == HTTPStatus.OK
    assert api_login(Client(), "juliet@example.org", NEW_PASSWORD).status_code == 401


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("second_via", ["api", "page"])
def test_two_password_changes_at_once_leave_one_password_and_its_session(
    owner: MailAccount, second_via: str
) -> None:
    # Two browsers of the owner change the password at the same moment. Each ends the
    # other's session: one must win with its session and its password, the other be
    # told its session ended; never both succeed with no session left and a password
    # one of them does not know.
    if connection.vendor != "postgresql":
        need_service("PostgreSQL", "the race needs connections that wait for a row lock")
    first, second = Client(), Client()
    logged_in(first, "juliet@example.org")
    if second_via == "page":
        page_login(second, "juliet@example.org")
        csrf = hidden(second.get(PAGES), "csrf")
    else:
        logged_in(second, "juliet@example.org")
    answers: dict[str, int] = {}

    def change(name: str, client: Client, new: str) -> None:
        try:
            if name == "second" and second_via == "page":
                form = {"csrf": csrf, "current_password": PASSWORD}
                form |= {"password": new, "password_again": new}
                answers[name] = client.post(f"{PAGES}password", form).status_code
            else:
                answers[name] = set_password(client, PASSWORD, new).status_code
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=change, args=("first", first, NEW_PASSWORD)),
        threading.Thread(target=change, args=("second", second, NEW_PASSWORD + "-2")),
    ]
    with transaction.atomic():
        # Hold the account's row, so both changes are under way before either can finish.
        MailAccount.objects.select_for_update().get(pk=owner.pk)
        for thread in threads:
            thread.start()
        wait_for_lock_waiters(2)
    for thread in threads:
        thread.join(timeout=60)

    succeeded = {HTTPStatus.NO_CONTENT, HTTPStatus.SEE_OTHER}
    winners = [name for name, status in answers.items() if status in succeeded]
    assert len(winners) == 1, answers
    [loser] = {"first", "second"} - set(winners)
    assert answers[loser] == HTTPStatus.UNAUTHORIZED  # its session was ended by the winner
    winner = first if winners == ["first"] else second
    new = NEW_PASSWORD if winner is first else NEW_PASSWORD + "-2"
    assert AccountSession.objects.get().pk == session_id(winner)
    assert api_login(Client(), "juliet@example.org", new).status_code == HTTPStatus.OK


def wait_for_lock_waiters(count: int) -> None:
    """Until `count` other connections of this database wait for a lock (PostgreSQL)."""
    for _ in range(600):
        with connection.cursor() as cursor:
            # Inside a transaction the statistics views are a snapshot: take a fresh one.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"{count} connections never waited for the lock")


@pytest.mark.parametrize(
    ("current", "new", "message"),
    [
        (PASSWORD + "x", NEW_PASSWORD, "current password is wrong"),
        (PASSWORD, "Short7!", "at least 8 characters"),
        (PASSWORD, PASSWORD, "differ from the current one"),
        (PASSWORD, "password123", "too common"),
    ],
    ids=["wrong current", "7 characters", "unchanged", "common"],
)
def test_set_password_refusals_change_nothing(
    two_sessions: tuple[Client, Client], owner: MailAccount, current: str, new: str, message: str
) -> None:
    mine, other = two_sessions
    before = snapshot(owner)

    response = set_password(mine, current, new)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["code"] == "user:error"
    assert message in response.json()["message"]
    assert snapshot(owner) == before
    assert other.get(API).status_code == HTTPStatus.OK


def test_set_password_needs_the_current_password(
    two_sessions: tuple[Client, Client], owner: MailAccount
) -> None:
    mine, _other = two_sessions
    response = post_json(mine, f"{API}/password", {"password": NEW_PASSWORD})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "currentPassword" in response.json()["fields"]


@pytest.mark.parametrize(
    "new",
    ["Qz7-" * 16, "pässwörd-ünïcødé-🙂-long enough", ("Wherefore-art-thou-" * 5)[:80]],
    ids=["64 characters", "non-ASCII", "80 characters"],
)
def test_long_and_non_ascii_passwords_are_accepted_and_verified_exactly(
    two_sessions: tuple[Client, Client], owner: MailAccount, new: str
) -> None:
    mine, _other = two_sessions
    assert set_password(mine, PASSWORD, new).status_code == HTTPStatus.NO_CONTENT
    # Differing only at character 70 (or the last, for the 64-character one): refused.
    position = min(69, len(new) - 1)
    changed = new[:position] + ("#" if new[position] != "#" else "%") + new[position + 1 :]

    assert api_login(Client(), "juliet@example.org", new).status_code == HTTPStatus.OK
    assert api_login(Client(), "juliet@example.org", changed).status_code == 401


# ----- Account, full name, sessions ---------------------------------------------------------------


def test_account_answers_the_owners_facts_and_the_mail_servers_usage(
    client: Client, mail_server: MailServer, make_provider: Callable[..., Any]
) -> None:
    from accounts.services.accounts import create_account

    make_provider(quota_mb=300)
    account = create_account(
        domain="example.org",
        local_part="juliet",
        password=PASSWORD,
        created_via="api",
        full_name="Juliet",
        third_pids=[("email", "juliet@capulet.example")],
    )
    logged_in(client, "juliet@example.org")
    mail_server.store("juliet@example.org", 123_456)

    response = client.get(API)

    assert response.status_code == HTTPStatus.OK
    assert response.json() == {
        "address": "juliet@example.org",
        "fullName": "Juliet",
        "provider": "Example Mail",
        "storageUsed": 123_456,
        "storageLimit": 300 * 1024 * 1024,
        "created": account.created_at.isoformat(),
        "thirdPIDs": [{"type": "email", "value": "juliet@capulet.example", "verified": False}],
    }


def test_account_says_storage_unknown_when_the_mail_server_cannot_tell(
    client: Client, owner: MailAccount, settings: Any
) -> None:
    settings.DOVEADM_API_URL = ""  # the sql backend without doveadm's API
    logged_in(client, "juliet@example.org")

    body = client.get(API).json()

    assert body["storageUsed"] is None
    assert body["storageLimit"] == 1024 * 1024 * 1024  # the provider's default 1024 MB


def test_account_save_full_name_saves_it_trimmed(client: Client, owner: MailAccount) -> None:
    logged_in(client, "juliet@example.org")

    response = post_json(client, f"{API}/full-name", {"fullName": "  Juliet Montague "})

    assert response.status_code == HTTPStatus.NO_CONTENT
    owner.refresh_from_db()
    assert owner.full_name == "Juliet Montague"
    assert client.get(API).json()["fullName"] == "Juliet Montague"


@pytest.mark.parametrize(
    "name", ["x" * 201, "Juliet\x00", "Juliet\u202eevil", 42], ids=["long", "NUL", "bidi", "number"]
)
def test_account_save_full_name_refusals_change_nothing(
    client: Client, owner: MailAccount, name: Any
) -> None:
    logged_in(client, "juliet@example.org")
    before = snapshot(owner)

    response = post_json(client, f"{API}/full-name", {"fullName": name})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["code"] == "user:error"
    assert snapshot(owner) == before


def test_sessions_lists_the_accounts_sessions_and_marks_this_one(
    two_sessions: tuple[Client, Client], stranger: MailAccount
) -> None:
    mine, _other = two_sessions
    logged_in(Client(HTTP_USER_AGENT="Romeo's phone"), "romeo@example.org")

    listed = mine.get(f"{API}/sessions").json()

    assert len(listed) == 2  # not the stranger's
    assert [item["current"] for item in listed].count(True) == 1
    assert set(listed[0]) == {"id", "created", "lastUsed", "expires", "userAgent", "ip", "current"}
    assert {item["ip"] for item in listed} == {"127.0.0.1"}


def test_revoking_another_session_ends_it_at_its_next_call(
    two_sessions: tuple[Client, Client],
) -> None:
    mine, other = two_sessions
    other_id = session_id(other)

    response = mine.delete(f"{API}/sessions/{other_id}", content_type="application/json")

    assert response.status_code == HTTPStatus.NO_CONTENT
    assert other.get(API).json()["code"] == "user:badAuth"
    assert mine.get(API).status_code == HTTPStatus.OK


def test_revoking_a_strangers_session_is_404_and_changes_nothing(
    client: Client, owner: MailAccount, stranger: MailAccount
) -> None:
    logged_in(client, "juliet@example.org")
    romeo = Client()
    logged_in(romeo, "romeo@example.org")
    romeo_id = AccountSession.objects.get(account=stranger).pk

    response = client.delete(f"{API}/sessions/{romeo_id}", content_type="application/json")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json()["code"] == "user:error"
    assert romeo.get(API).status_code == HTTPStatus.OK


def test_revoking_this_session_logs_out(client: Client, owner: MailAccount) -> None:
    logged_in(client, "juliet@example.org")
    mine = AccountSession.objects.get().pk

    response = client.delete(f"{API}/sessions/{mine}", content_type="application/json")

    assert response.status_code == HTTPStatus.NO_CONTENT
    assert response.cookies[web.session_cookie_name()]["max-age"] == 0
    assert not AccountSession.objects.exists()


def test_no_token_is_stored_in_clear(client: Client, owner: MailAccount, redis_client: Any) -> None:
    login_token = post_json(client, f"{API}/login-prep").json()["loginToken"]
    unused = post_json(Client(), f"{API}/login-prep").json()["loginToken"]  # still in the cache
    body = {"loginToken": login_token, "username": "juliet@example.org", "password": PASSWORD}
    csrf = post_json(client, f"{API}/login", body).json()["csrfToken"]
    token = session_of(client)

    rows = " ".join(str(value) for row in AccountSession.objects.values_list() for value in row)
    # The cache (Redis) holds login tokens by their hash only, and nothing of a session.
    cached = b" ".join(
        key + b" " + (redis_client.get(key) or b"")
        for key in redis_client.scan_iter()
        if redis_client.type(key) == b"string"
    )
    assert token_hash(token) in rows
    assert token_hash(unused).encode() in cached  # where the tokens would be, looked at
    for secret in (token, csrf, login_token, unused):
        assert secret not in rows
        assert secret.encode() not in cached


# ----- Error reports: no password, no token ------------------------------------------------------


def test_the_error_report_of_a_failing_login_holds_no_password_and_no_token(
    client: Client,
    owner: MailAccount,
    error_reports: Callable[[], str],
    hasher_breaks: Callable[[], None],
) -> None:
    held = logged_in(client, "juliet@example.org")  # a cookie the failing login carries
    hasher_breaks()
    client.raise_request_exception = False
    token = post_json(client, f"{API}/login-prep").json()["loginToken"]
    body = {"loginToken": token, "username": "juliet@example.org", "password": PASSWORD}

    response = post_json(client, f"{API}/login", body)

    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    csrf = client.defaults["HTTP_X_CSRF_TOKEN"]
    assert_report_keeps_out(
        error_reports(), raised_in="log_in", secrets=(PASSWORD, token, held, csrf)
    )


def test_the_error_report_of_a_failing_set_password_holds_neither_password(
    client: Client,
    owner: MailAccount,
    error_reports: Callable[[], str],
    hasher_breaks: Callable[[], None],
) -> None:
    held = logged_in(client, "juliet@example.org")
    hasher_breaks()
    client.raise_request_exception = False

    response = set_password(client, PASSWORD, NEW_PASSWORD)

    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    csrf = client.defaults["HTTP_X_CSRF_TOKEN"]
    assert_report_keeps_out(
        error_reports(),
        raised_in="change_password",
        secrets=(PASSWORD, NEW_PASSWORD, held, csrf),
    )


# ----- Login brute force (RELIABILITY.md check 13) ------------------------------------------------


@pytest.fixture
def limits_on(settings: Any, redis_client: Any) -> Iterator[datetime]:
    """Rate limits on, on Redis, with the clock frozen inside one hour's window."""
    settings.RATELIMIT_ENABLE = True
    now = datetime.now(UTC)
    frozen = now.replace(minute=0, second=1, microsecond=0) + timedelta(hours=1)
    with time_machine.travel(frozen, tick=False):
        yield frozen


@pytest.fixture
def target(owner: MailAccount) -> str:
    """The address of an account of its own: Redis keeps per-name counters between runs."""
    from accounts.services.accounts import create_account

    account = create_account(
        domain="example.org",
        local_part=f"juliet-{secrets.token_hex(4)}",
        password=PASSWORD,
        created_via="admin",
    )
    return account.address


def attempt(username: str, password: str, ip: str) -> Any:
    return api_login(Client(REMOTE_ADDR=ip), username, password)


def test_more_than_ten_failures_a_minute_from_one_address_are_refused_for_the_window(
    target: str, limits_on: datetime, verifications: list[str]
) -> None:
    ip = new_ip()
    failures = [attempt(target, "wrong-password", ip) for _ in range(10)]
    verifications.clear()

    refused = attempt(target, PASSWORD, ip)  # even the right password

    assert {r.json()["code"] for r in failures} == {"user:badLogin"}
    assert refused.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert refused.json()["code"] == "user:rateLimited"
    # Until the failures have aged out: a minute, plus at most one of the window's six slices.
    assert 0 < int(refused["Retry-After"]) <= 60 + 10
    assert verifications == []  # no password is checked past the limit
    other_ip = new_ip()
    assert attempt(target, PASSWORD, other_ip).status_code == HTTPStatus.OK
    wait = timedelta(seconds=int(refused["Retry-After"]))
    with time_machine.travel(limits_on + wait, tick=False):
        assert attempt(target, PASSWORD, ip).status_code == HTTPStatus.OK


def test_no_more_than_a_hundred_failures_an_hour_on_one_account(
    target: str, limits_on: datetime, verifications: list[str]
) -> None:
    # From a hundred addresses, one guess each: no address limit is reached.
    statuses = [attempt(target, "wrong-password", new_ip()).status_code for _ in range(100)]
    checked = len(verifications)

    refused = attempt(target, PASSWORD, new_ip())  # even the right password

    assert statuses == [HTTPStatus.UNAUTHORIZED] * 100
    assert checked == 100
    assert refused.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert refused.json()["code"] == "user:rateLimited"
    assert len(verifications) == 100  # the 101st guess was never checked
    assert 0 < int(refused["Retry-After"]) <= 3600 + 600  # an hour and at most a slice
    # Another account is not locked by guesses at this one.
    assert attempt("juliet@example.org", PASSWORD, new_ip()).status_code == HTTPStatus.OK


def test_the_address_limit_holds_across_the_turn_of_a_minute(
    target: str, limits_on: datetime, verifications: list[str]
) -> None:
    # Ten failures in the last seconds of one clock minute, then more in the first seconds
    # of the next: a fixed window would let ten more through, twenty in eleven seconds.
    ip = new_ip()
    with time_machine.travel(limits_on + timedelta(seconds=50), tick=False):
        for _ in range(10):
            assert attempt(target, "wrong", ip).status_code == HTTPStatus.UNAUTHORIZED
    verifications.clear()
    later = limits_on + timedelta(seconds=61)
    with time_machine.travel(later, tick=False):
        refused = attempt(target, PASSWORD, ip)

    assert refused.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert verifications == []
    # Retry-After is honest: a second earlier still refused, then the failures have aged out.
    wait = int(refused["Retry-After"])
    assert 0 < wait <= 60
    with time_machine.travel(later + timedelta(seconds=wait - 1), tick=False):
        assert attempt(target, PASSWORD, ip).status_code == HTTPStatus.TOO_MANY_REQUESTS
    with time_machine.travel(later + timedelta(seconds=wait), tick=False):
        assert attempt(target, PASSWORD, ip).status_code == HTTPStatus.OK


def test_the_account_limit_holds_across_the_turn_of_an_hour(
    target: str, limits_on: datetime, settings: Any
) -> None:
    settings.LOGIN_FAILURES_PER_ACCOUNT_RATE = "5/h"  # the same code path, fewer hashes
    with time_machine.travel(limits_on + timedelta(minutes=55), tick=False):
        for _ in range(5):
            assert attempt(target, "wrong", new_ip()).status_code == HTTPStatus.UNAUTHORIZED
    with time_machine.travel(limits_on + timedelta(minutes=61), tick=False):
        refused = attempt(target, PASSWORD, new_ip())

    assert refused.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert 0 < int(refused["Retry-After"]) <= 3600


def test_refused_attempts_do_not_prolong_the_account_limit(
    target: str, limits_on: datetime, settings: Any
) -> None:
    # A guesser who keeps knocking once the limit is reached checks no password, so the
    # account opens again when its failures age out, not an hour after the last knock.
    settings.LOGIN_FAILURES_PER_ACCOUNT_RATE = "5/h"
    for _ in range(5):
        assert attempt(target, "wrong", new_ip()).status_code == HTTPStatus.UNAUTHORIZED
    for minutes in (10, 30, 50, 59):
        with time_machine.travel(limits_on + timedelta(minutes=minutes), tick=False):
            knock = attempt(target, "wrong", new_ip())
            assert knock.status_code == HTTPStatus.TOO_MANY_REQUESTS
    opens = limits_on + timedelta(minutes=59, seconds=int(knock["Retry-After"]))

    with time_machine.travel(opens, tick=False):
        assert attempt(target, PASSWORD, new_ip()).status_code == HTTPStatus.OK
    assert opens <= limits_on + timedelta(minutes=70)


def test_names_that_do_not_exist_are_limited_alike(
    owner: MailAccount, limits_on: datetime, settings: Any
) -> None:
    settings.LOGIN_FAILURES_PER_ACCOUNT_RATE = "5/h"  # the same code path, fewer hashes
    name = f"nobody-{secrets.token_hex(4)}@example.org"
    statuses = [attempt(name, "wrong", new_ip()).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]


def test_the_account_limit_holds_against_the_real_name(
    target: str, limits_on: datetime, settings: Any
) -> None:
    settings.LOGIN_FAILURES_PER_ACCOUNT_RATE = "5/h"  # the same code path, fewer hashes
    for _ in range(5):
        assert attempt(target, "wrong", new_ip()).status_code == 401

    assert attempt(target.upper(), PASSWORD, new_ip()).status_code == 429


def test_a_success_resets_only_that_addresss_failures(target: str, limits_on: datetime) -> None:
    lucky, unlucky = new_ip(), new_ip()
    for ip in (lucky, unlucky):
        for _ in range(9):
            assert attempt(target, "wrong", ip).status_code == 401

    assert attempt(target, PASSWORD, lucky).status_code == HTTPStatus.OK

    for _ in range(10):
        assert attempt(target, "wrong", lucky).status_code == 401
    assert attempt(target, "wrong", unlucky).status_code == 401  # its 10th
    assert attempt(target, PASSWORD, unlucky).status_code == 429


def test_a_success_forgives_only_the_addresss_failures_on_the_name_it_logged_in_as(
    target: str, owner: MailAccount, limits_on: datetime
) -> None:
    # Someone guessing at other people's passwords cannot wipe the slate clean by logging
    # in to an account of their own now and then.
    ip = new_ip()
    for _ in range(9):
        assert attempt(target, "wrong", ip).status_code == HTTPStatus.UNAUTHORIZED
    assert attempt("juliet@example.org", PASSWORD, ip).status_code == HTTPStatus.OK

    assert attempt(target, "wrong", ip).status_code == HTTPStatus.UNAUTHORIZED  # the 10th
    assert attempt(target, PASSWORD, ip).status_code == HTTPStatus.TOO_MANY_REQUESTS


def test_login_prep_logout_and_password_changes_reset_no_counter(
    target: str, limits_on: datetime
) -> None:
    ip = new_ip()
    client = Client(REMOTE_ADDR=ip)
    logged_in(client, target)  # before the failures: a session from there
    for _ in range(8):
        assert attempt(target, "wrong", ip).status_code == 401
    # A wrong current password counts as the 9th failure; a right one forgives nothing.
    assert set_password(client, "wrong", NEW_PASSWORD).status_code == 400
    assert set_password(client, PASSWORD, NEW_PASSWORD).status_code == 204
    for _ in range(3):
        assert post_json(client, f"{API}/login-prep").status_code == 200
    assert post_json(client, f"{API}/logout").status_code == 204
    assert attempt(target, "wrong", ip).status_code == 401  # the 10th

    assert attempt(target, NEW_PASSWORD, ip).status_code == 429


def test_login_fails_closed_when_the_cache_is_down(
    client: Client, owner: MailAccount, settings: Any, cache_down: None
) -> None:
    settings.RATELIMIT_ENABLE = True

    response = post_json(client, f"{API}/login-prep")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["code"] == "server:error"
    assert response["Retry-After"] == "30"


def test_the_api_answers_503_while_the_database_is_down_and_works_after(
    owner: MailAccount, database_down: Callable[[], None]
) -> None:
    client = Client(raise_request_exception=False)
    logged_in(client, "juliet@example.org")
    saved = dict(connection.settings_dict)
    database_down()

    calls = [client.get(API), post_json(client, f"{API}/full-name", {"fullName": "Jules"})]
    calls.append(api_login(Client(raise_request_exception=False), "juliet@example.org"))

    for response in calls:
        assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
        assert response.json()["code"] == "server:error"
        assert int(response["Retry-After"]) > 0
    connection.close()
    connection.settings_dict.update(saved)
    assert client.get(API).status_code == HTTPStatus.OK


def test_the_schema_describes_every_account_call_with_its_csrf_header(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]

    for path, method in [
        ("/api/v1/account", "get"),
        ("/api/v1/account/logout", "post"),
        ("/api/v1/account/password", "post"),
        ("/api/v1/account/full-name", "post"),
        ("/api/v1/account/sessions", "get"),
        ("/api/v1/account/sessions/{session_id}", "delete"),
    ]:
        headers = {p["name"] for p in paths[path][method].get("parameters", [])}
        assert "X-CSRF-Token" in headers, path
    assert "/api/v1/account/login-prep" in paths and "/api/v1/account/login" in paths
