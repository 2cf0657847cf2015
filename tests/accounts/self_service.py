"""Helpers of the self-service tests: log in through the API or the pages as a client would."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from django.test import Client

from accounts import web
from accounts.models import AccountSession

PASSWORD = "Balcony-at-midnight-42"
API = "/api/v1/account"
PAGES = "/account/"


def post_json(client: Client, path: str, body: Any = None, **extra: Any) -> Any:
    """POST `body` as JSON (no body at all when None)."""
    data = "" if body is None else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", **extra)


def api_login(client: Client, username: str, password: str = PASSWORD, **extra: Any) -> Any:
    """LoginPrep, then Login with its token: Login's response."""
    token = post_json(client, f"{API}/login-prep", **extra).json()["loginToken"]
    body = {"loginToken": token, "username": username, "password": password}
    return post_json(client, f"{API}/login", body, **extra)


def logged_in(client: Client, username: str, password: str = PASSWORD) -> str:
    """Log `client` in through the API; it sends the CSRF header from then on. The token."""
    response = api_login(client, username, password)
    assert response.status_code == 200, response.content
    csrf: str = response.json()["csrfToken"]
    client.defaults["HTTP_X_CSRF_TOKEN"] = csrf
    return session_of(client)


def session_of(client: Client) -> str:
    """The session token `client` holds (its cookie)."""
    cookie = client.cookies.get(web.session_cookie_name())
    return cookie.value if cookie is not None else ""


def session_id(client: Client) -> int:
    """The id of the AccountSession `client` holds (the row keeps only the token's hash)."""
    digest = hashlib.sha256(session_of(client).encode()).hexdigest()
    return AccountSession.objects.get(token_hash=digest).pk


def page_login(client: Client, username: str, password: str = PASSWORD, **extra: Any) -> Any:
    """The login page, then its form posted with the login token it carries."""
    page = client.get(f"{PAGES}login", **extra)
    return client.post(
        f"{PAGES}login",
        {"login_token": hidden(page, "login_token"), "username": username, "password": password},
        **extra,
    )


def hidden(response: Any, name: str) -> str:
    """The value of the hidden input `name` in an HTML answer."""
    found = re.search(rf'name="{name}" value="([^"]*)"', response.content.decode())
    assert found is not None, f"no hidden {name} in the page"
    return found.group(1)


# Django's mark of a value kept out of an error report.
CLEANSED = "********************"


def assert_report_keeps_out(report: str, *, raised_in: str, secrets: tuple[str, ...]) -> None:
    """`report` (tests/accounts/conftest.py `error_reports`) is the report of the failure in
    `raised_in`, its frames' variables are there but cleansed, and no secret is in it."""
    assert "the hasher is out of order" in report and raised_in in report
    assert CLEANSED in report
    for secret in secrets:
        assert secret not in report
