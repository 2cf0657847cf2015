"""The hosted registration pages over real HTTP, without a browser or JavaScript.

A plain HTTP client with a cookie jar completes the flow against the live server; raw,
unencoded entry URLs arrive over a socket; forms and the registration API race for one
address (RELIABILITY.md check 1); the https deployment under gunicorn sends the cookie and
header attributes of check 14.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import secrets
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

import defusedxml.ElementTree as DET
import pytest

from accounts import cpe3
from accounts.dovecot import PrivateDovecot
from accounts.models import MailAccount
from accounts.services.accounts import create_account
from providers.models import Provider
from tests.conftest import form_values, http_post_json
from tests.e2e.registration import imap_logs_in

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

PASSWORD = "Balcony-at-midnight-42"


@pytest.fixture
def provider(make_provider: Callable[..., Provider], settings: Any) -> Provider:
    settings.RATELIMIT_ENABLE = False  # the race sends more than one client's share
    return make_provider(tos_url="https://example.org/tos", privacy_url="https://example.org/")


class Browserless:
    """urllib with a cookie jar: what a person without JavaScript (or a script) does."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.base = base
        self.headers = headers or {}
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def request(self, path: str, data: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(  # noqa: S310 - the live test server
            self.base + path, data=body, headers=self.headers
        )
        try:
            with self.opener.open(request, timeout=60) as answer:
                return answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def to_password_step(self, local_part: str) -> bytes:
        status, _, page = self.request(f"/register/example/?email={local_part}@example.org")
        assert status == HTTPStatus.OK
        values = form_values(page, "/address") | {"first_name": "Juliet"}
        status, _, page = self.request("/register/example/address", values)
        assert status == HTTPStatus.OK, page
        return page

    def finish(self, page: bytes, password: str) -> tuple[int, Any, bytes]:
        values = form_values(page, "/password") | {
            "password": password,
            "password_again": password,
            "accept_terms": "on",
        }
        return self.request("/register/example/password", values)


def test_the_flow_completes_over_plain_http_without_javascript(
    live_server: Any, provider: Provider, dovecot: PrivateDovecot
) -> None:
    """The browser test's flow, by a client that runs no script: taken address, an
    alternative chosen, a weak password refused, then credentials that log in to Dovecot."""
    create_account(
        domain="example.org", local_part="juliet", password="Someone-elses-99", created_via="admin"
    )
    client = Browserless(live_server.url)
    status, _, entry = client.request(
        "/register/example/?email=juliet@example.org&first_name=Juliet&last_name=Capulet"
    )
    assert status == HTTPStatus.OK

    status, _, taken = client.request("/register/example/address", form_values(entry, "/address"))
    assert status == HTTPStatus.BAD_REQUEST
    assert b"This address is already taken." in taken
    choice = form_values(taken, "/address") | {"choose": "juliet.capulet@example.org"}
    status, _, step = client.request("/register/example/address", choice)
    assert status == HTTPStatus.OK
    assert b"<script" not in step  # nothing on the page needs a script
    status, _, weak = client.finish(step, "password")
    assert status == HTTPStatus.BAD_REQUEST
    assert b"This password is too common." in weak
    status, headers, body = client.finish(weak, PASSWORD)

    assert status == HTTPStatus.OK
    assert headers["Content-Type"] == "text/xml; charset=utf-8"
    assert headers["X-Thunderbird-Account-Email"] == "juliet.capulet@example.org"
    server = DET.fromstring(body).find("emailProvider/incomingServer")
    username, password = server.findtext("username"), server.findtext("password")
    assert (username, password) == ("juliet.capulet@example.org", PASSWORD)
    assert imap_logs_in(dovecot, username, password)
    assert not imap_logs_in(dovecot, username, PASSWORD + "x")
    assert MailAccount.objects.filter(local_part="juliet.capulet").count() == 1


def test_a_post_without_the_csrf_cookie_is_refused_over_http(
    live_server: Any, provider: Provider
) -> None:
    page = Browserless(live_server.url).to_password_step("juliet")
    stranger = Browserless(live_server.url)  # the form, but not the cookie

    status, _, body = stranger.finish(page, PASSWORD)

    assert status == HTTPStatus.FORBIDDEN
    assert b"Please start again" in body
    assert not MailAccount.objects.exists()


def raw_get(port: int, target: bytes) -> tuple[int, bytes]:
    """GET `target` exactly as given (no encoding), over a socket; the status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_raw_unencoded_entry_urls_start_the_page(live_server: Any, provider: Provider) -> None:
    # Thunderbird's string replacement leaves "&", "+", "'" and UTF-8 raw; a browser then
    # encodes only spaces. The address comes from `email`, the names as sent.
    port = urllib.parse.urlsplit(live_server.url).port
    assert port is not None
    target = (
        "/register/example/?email=tom@example.org&first_name=Tom%20&%20Jerry+Co"
        "&last_name=O'Brien-Ünal%20李"
    ).encode()

    status, body = raw_get(port, target)

    assert status == HTTPStatus.OK
    values = form_values(body, "/address")
    assert values["local_part"] == "tom"
    assert values["first_name"] == "Tom & Jerry+Co"
    assert values["last_name"] == "O'Brien-Ünal 李"


def _api_register(url: str, password: str) -> tuple[int, dict[str, Any]]:
    body = {
        "id": secrets.token_hex(8),
        "type": cpe3.REGISTER,
        "to": ["example.org"],
        "payload": {"username": "juliet", "password": password, "thirdPIDs": []},
    }
    return http_post_json(url + "/api/v1/register", body)


def test_twenty_concurrent_form_and_api_registrations_of_one_address_create_one(
    live_server: Any, provider: Provider, dovecot: PrivateDovecot
) -> None:
    """RELIABILITY.md check 1, forms and API mixed: one success, 19 id_exists, no 5xx."""
    forms = [Browserless(live_server.url) for _ in range(10)]
    pages = [client.to_password_step("juliet") for client in forms]  # all see it free
    passwords = [f"Race-{index}-{secrets.token_hex(6)}" for index in range(20)]
    barrier = threading.Barrier(20)

    def by_form(index: int) -> tuple[str, int, str]:
        barrier.wait()
        status, headers, body = forms[index].finish(pages[index], passwords[index])
        taken = b"This address is already taken." in body
        kind = "xml" if headers["Content-Type"].startswith("text/xml") else "html"
        return kind, status, "id_exists" if taken else ""

    def by_api(index: int) -> tuple[str, int, str]:
        barrier.wait()
        status, answer = _api_register(live_server.url, passwords[index])
        refused = answer.get("payload", {}).get("errID") == cpe3.ID_EXISTS
        return "api", status, "id_exists" if refused else ""

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(by_form, i) for i in range(10)]
        futures += [pool.submit(by_api, i) for i in range(10, 20)]
        results = [future.result() for future in futures]

    successes = [
        index
        for index, (kind, status, _) in enumerate(results)
        if (kind, status) in {("xml", HTTPStatus.OK), ("api", HTTPStatus.CREATED)}
    ]
    refusals = [(kind, status, code) for kind, status, code in results if code == "id_exists"]
    assert len(successes) == 1, results
    assert len(refusals) == 19, results
    assert {status for _, status, _ in refusals} == {HTTPStatus.CONFLICT}
    assert all(status < HTTPStatus.INTERNAL_SERVER_ERROR for _, status, _ in results)
    assert MailAccount.objects.filter(local_part="juliet").count() == 1
    # The mail server has that one mailbox, with the winner's password, not a loser's (one
    # refusal only: Dovecot delays each further failed login from the same address).
    winner = passwords[successes[0]]
    loser = passwords[(successes[0] + 1) % 20]
    assert dovecot.auth_test("juliet@example.org", winner)
    assert not dovecot.auth_test("juliet@example.org", loser)


def test_https_deployment_sends_the_cookie_and_header_attributes_of_check_14(
    portal_server: Callable[..., Any], provider: Provider
) -> None:
    """RELIABILITY.md check 14 on these pages, under gunicorn with production settings."""
    port_probe = portal_server(
        PORTAL_BASE_URL="https://127.0.0.1",
        PORTAL_TRUSTED_PROXIES="127.0.0.1/32",
        SECRET_KEY=secrets.token_urlsafe(50),
    )
    # The TLS proxy in front speaks https to the client and tells us so.
    headers = {"X-Forwarded-Proto": "https", "Host": "127.0.0.1"}
    connection = http.client.HTTPConnection("127.0.0.1", port_probe.port, timeout=30)
    connection.request("GET", "/register/example/?email=juliet@example.org", headers=headers)
    answer = connection.getresponse()
    page = answer.read()

    assert answer.status == HTTPStatus.OK
    cookie = answer.getheader("Set-Cookie") or ""
    name, _, attributes = cookie.partition(";")
    flags = {part.strip().split("=")[0].lower() for part in attributes.split(";")}
    assert name.startswith("__Host-csrftoken=")
    assert {"httponly", "secure", "path", "samesite"} <= flags
    assert "domain" not in flags
    assert "Path=/" in cookie
    assert "SameSite=Lax" in cookie
    hsts = answer.getheader("Strict-Transport-Security") or ""
    assert int(hsts.split("max-age=")[1].split(";")[0]) >= 31_536_000
    policy = answer.getheader("Content-Security-Policy") or ""
    for directive in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in policy
    assert answer.getheader("X-Content-Type-Options") == "nosniff"
    assert answer.getheader("X-Frame-Options") == "DENY"
    assert "no-store" in (answer.getheader("Cache-Control") or "")

    # The CSRF check holds over https too: the form with its cookie and Origin goes through.
    values = form_values(page, "/address") | {"first_name": "Juliet"}
    token_cookie = name
    connection.request(
        "POST",
        "/register/example/address",
        body=urllib.parse.urlencode(values),
        headers={
            **headers,
            "Cookie": token_cookie,
            "Origin": "https://127.0.0.1",
            "Referer": "https://127.0.0.1/register/example/",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    step = connection.getresponse()
    assert step.status == HTTPStatus.OK, step.read()
    connection.close()
