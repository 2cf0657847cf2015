"""What the self-service pages and the account API share at the edge: cookies, Origin, headers.

Cookies (RELIABILITY.md check 14; docs/self-service.md):

- the session cookie is `__Host-mailportal_session` over https (`Secure`, `Path=/`, no
  `Domain`: browsers then bind it to this exact origin) and `mailportal_session` on a plain
  http origin (`make run` on loopback), where browsers refuse the prefix; `Path=/` because
  the pages (/account/) and the API (/api/v1/account/) share one session;
- the login-token cookie of LoginPrep is scoped to the one path that reads it
  (`/api/v1/account/login` or `/account/login`), named `__Secure-...` over https;
- both are HttpOnly and SameSite=Strict, and have no expiry (they end with the browser;
  the server ends sessions on its own clock).
"""

from __future__ import annotations

import ipaddress
import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext

from accounts.services.accounts import DatabaseUnavailable
from accounts.services.sessions import ClientInfo, CSRFRefused
from portal.proxies import client_ip

logger = logging.getLogger(__name__)

SESSION_COOKIE = "mailportal_session"
LOGIN_COOKIE = "mailportal_login"
CSRF_HEADER = "X-CSRF-Token"
# API answers are data, never documents to render. (The pages take portal.pages' policy.)
API_CSP = "default-src 'none'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
# Sec-Fetch-Site values of a request the portal's own pages (or a typed URL) made.
_OWN_FETCH_SITES = {"same-origin", "none"}


def session_cookie_name() -> str:
    return f"__Host-{SESSION_COOKIE}" if settings.PORTAL_HTTPS else SESSION_COOKIE


def login_cookie_name() -> str:
    return f"__Secure-{LOGIN_COOKIE}" if settings.PORTAL_HTTPS else LOGIN_COOKIE


def session_token(request: HttpRequest) -> str | None:
    return request.COOKIES.get(session_cookie_name()) or None


def login_cookie(request: HttpRequest) -> str | None:
    return request.COOKIES.get(login_cookie_name()) or None


def set_session_cookie(response: HttpResponseBase, token: str) -> None:
    response.set_cookie(
        session_cookie_name(),
        token,
        path="/",
        secure=settings.PORTAL_HTTPS,
        httponly=True,
        samesite="Strict",
    )


def clear_session_cookie(response: HttpResponseBase) -> None:
    response.delete_cookie(session_cookie_name(), path="/", samesite="Strict")
    if settings.PORTAL_HTTPS:
        # delete_cookie marks only __Secure-/__Host- names Secure by itself; be explicit.
        response.cookies[session_cookie_name()]["secure"] = True


def set_login_cookie(response: HttpResponseBase, token: str, *, path: str) -> None:
    response.set_cookie(
        login_cookie_name(),
        token,
        path=path,
        secure=settings.PORTAL_HTTPS,
        httponly=True,
        samesite="Strict",
    )


def clear_login_cookie(response: HttpResponseBase, *, path: str) -> None:
    response.delete_cookie(login_cookie_name(), path=path, samesite="Strict")


def check_origin(request: HttpRequest) -> None:
    """CSRFRefused for a request another site's page made (RELIABILITY.md check 17).

    `Origin` must be this portal's own origin when present (browsers send it with every
    POST and every cross-origin fetch); `Sec-Fetch-Site`, when present, must say the
    request came from this origin or from the person (a typed address). SameSite=Strict
    cookies already keep the session out of such requests; this refuses them outright.
    """
    origin = request.headers.get("Origin")
    if origin is not None:
        own = {f"{request.scheme}://{request.get_host()}", settings.PORTAL_BASE_URL}
        if origin.rstrip("/") not in own:
            raise CSRFRefused(gettext("This request came from another site's page."))
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in _OWN_FETCH_SITES:
        raise CSRFRefused(gettext("This request came from another site's page."))


# Errors of the database connection itself (down, connection lost, a lock timeout).
DATABASE_DOWN = (OperationalError, InterfaceError)


class DatabaseDown(DatabaseUnavailable):
    """What the self-service edges answer when the database fails (503, Retry-After)."""

    retry_after = 30

    def __init__(self) -> None:
        super().__init__(gettext("The account database is not reachable; try again shortly."))


def database_down(exc: Exception) -> DatabaseDown:
    """The answer to a database error at a self-service edge, logged (never a 500)."""
    logger.error("self-service: database unavailable: %s", type(exc).__name__)
    return DatabaseDown()


def client_info(request: HttpRequest) -> ClientInfo:
    """The client's address (None if it is not one, e.g. a UNIX socket) and User-Agent."""
    try:
        ip: str | None = str(ipaddress.ip_address(client_ip(request)))
    except ValueError:
        ip = None
    return ClientInfo(ip=ip, user_agent=request.headers.get("User-Agent", ""))


def private_headers(response: HttpResponseBase, *, csp: str) -> None:
    """Never cached (the answers are one person's), never framed, nothing to run but ours."""
    add_never_cache_headers(response)
    response["Content-Security-Policy"] = csp
