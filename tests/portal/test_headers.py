"""Security headers and cookie attributes (RELIABILITY.md check 14).

The https half runs the portal under gunicorn with production settings (an https
PORTAL_BASE_URL), behind a "TLS proxy": the test speaks plain HTTP from a trusted proxy
address and sends X-Forwarded-Proto: https, as nginx would.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.test import Client

from accounts.models import AccountSession
from accounts.services.accounts import create_account
from providers.models import Provider
from tests.conftest import PortalServer

PASSWORD = "Balcony-at-midnight-42"
BASELINE = ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'")


def test_every_answer_carries_the_baseline_policy(client: Client, db: None) -> None:
    for path in ("/healthz", "/admin/login/", "/api/v1/providers", "/no-such-page"):
        policy = client.get(path)["Content-Security-Policy"]
        assert all(part in policy for part in BASELINE), path


def test_a_page_with_its_own_policy_keeps_it(client: Client, db: None) -> None:
    policy = client.get("/account/login")["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'")
    assert all(part in policy for part in BASELINE)


class Proxied:
    """Requests to the gunicorn portal as a trusted TLS proxy forwards them."""

    def __init__(self, server: PortalServer) -> None:
        self.server = server
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=15)
        sent = {
            "X-Forwarded-Proto": "https",
            "X-Forwarded-For": "203.0.113.7",
            "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
            **(headers or {}),
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            content = response.read()
        finally:
            connection.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(header)
            for name, morsel in parsed.items():
                self.cookies[name] = morsel.value
        return response, content


def set_cookies(response: http.client.HTTPResponse) -> dict[str, str]:
    """The raw Set-Cookie lines by cookie name."""
    lines = response.headers.get_all("Set-Cookie") or []
    return {line.split("=", 1)[0]: line for line in lines}


def attributes(line: str) -> set[str]:
    return {part.strip().lower() for part in line.split(";")[1:]}


@pytest.mark.services
def test_https_cookies_are_host_bound_secure_http_only_strict_and_headers_are_strict(
    portal_server: Callable[..., PortalServer], make_provider: Callable[..., Provider]
) -> None:
    make_provider()
    create_account(
        domain="example.org", local_part="juliet", password=PASSWORD, created_via="admin"
    )
    server = portal_server(
        PORTAL_BASE_URL="https://127.0.0.1",
        PORTAL_TRUSTED_PROXIES="127.0.0.1/32",
        SECRET_KEY="check-14-" + "k" * 50,
    )
    browser = Proxied(server)
    origin = {"Origin": "https://127.0.0.1"}

    prep, prep_body = browser.request("POST", "/api/v1/account/login-prep", headers=origin)
    login, login_body = browser.request(
        "POST",
        "/api/v1/account/login",
        {
            "loginToken": json.loads(prep_body)["loginToken"],
            "username": "juliet@example.org",
            "password": PASSWORD,
        },
        headers=origin,
    )
    csrf = json.loads(login_body)["csrfToken"]
    account, _ = browser.request("GET", "/api/v1/account", headers={"X-CSRF-Token": csrf})
    admin, _ = browser.request("GET", "/admin/login/")

    assert prep.status == login.status == account.status == HTTPStatus.OK
    login_cookie = set_cookies(prep)["__Secure-mailportal_login"]
    assert attributes(login_cookie) >= {
        "secure",
        "httponly",
        "samesite=strict",
        "path=/api/v1/account/login",
    }
    session_cookie = set_cookies(login)["__Host-mailportal_session"]
    assert attributes(session_cookie) >= {"secure", "httponly", "samesite=strict", "path=/"}
    assert not any(part.startswith("domain=") for part in attributes(session_cookie))
    assert not any(part.startswith(("expires=", "max-age=")) for part in attributes(session_cookie))
    # The administrators' cookies are host-bound and Secure as well.
    admin_csrf = set_cookies(admin)["__Host-csrftoken"]
    assert "secure" in attributes(admin_csrf)
    assert "path=/" in attributes(admin_csrf)
    for response in (prep, login, account, admin):
        hsts = response.headers["Strict-Transport-Security"]
        assert int(hsts.split("max-age=")[1].split(";")[0]) >= 31_536_000
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        policy = response.headers["Content-Security-Policy"]
        assert all(part in policy for part in BASELINE)
    assert admin.headers["X-Frame-Options"] == "DENY"
    # Behind the trusted proxy the session records the client, not the proxy.
    assert AccountSession.objects.get().ip == "203.0.113.7"
