"""The admin site: its login limited, its actions audited, reachable from admin networks only.

RELIABILITY.md check 28. `PortalAdminSite` is Django's default admin site (installed as
`portal.apps.PortalAdminConfig`, Django's documented way to replace it), so every app keeps
registering with `admin.site` / `@admin.register` as before.

- Login: failed logins are counted per client address and per typed user name
  (`ADMIN_LOGIN_FAILURES_*` in settings, portal.ratelimit's failure counters); past either
  limit the login answers 429 with Retry-After and checks no password; the cache down is
  503 (fail closed). A success forgives the address's failures.
- Actions: every admin action (on any model) is one `admin.action` security event: who,
  which action, which model, how many objects (portal/audit.py).
- `AdminNetworkMiddleware`: with PORTAL_ADMIN_NETWORKS set, /admin/ answers 404 to every
  client address outside those networks (the admin's "second factor" of check 28 is where
  it can be reached from; docs/security.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin import helpers
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.translation import gettext

from portal import ratelimit
from portal.audit import current_admin, security_event
from portal.proxies import client_ip


class _LoginFailed(Exception):
    """The admin login form was answered without logging anyone in."""


class PortalAdminSite(admin.AdminSite):
    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if request.method != "POST":
            return super().login(request, extra_context)
        name = str(request.POST.get("username", ""))
        response: Any = None
        try:
            with ratelimit.credential_attempt(
                request,
                name=name,
                failure=_LoginFailed,
                limits=(
                    ratelimit.ADMIN_LOGIN_FAILURES_PER_IP,
                    ratelimit.ADMIN_LOGIN_FAILURES_PER_ACCOUNT,
                ),
            ):
                response = super().login(request, extra_context)
                if not request.user.is_authenticated:
                    raise _LoginFailed
        except _LoginFailed:
            return response
        except (ratelimit.RateLimited, ratelimit.RateLimiterUnavailable) as exc:
            return _refusal(exc)
        return response

    def register(
        self,
        model_or_iterable: type[Model] | Iterable[type[Model]],
        admin_class: type[admin.ModelAdmin] | None = None,
        **options: Any,
    ) -> None:
        """Register as usual, with the ModelAdmin's actions audited (AuditedActions)."""
        base = admin_class or admin.ModelAdmin
        audited = type(base.__name__, (AuditedActions, base), {"__module__": base.__module__})
        super().register(model_or_iterable, audited, **options)


class AuditedActions(admin.ModelAdmin):
    """Every action run through the change list is one `admin.action` security event."""

    def response_action(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        action = str(request.POST.get("action", ""))
        selected = len(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME))
        response = super().response_action(request, queryset)
        if action:
            security_event(
                "admin.action",
                outcome="run",
                actor=current_admin(),
                action=action,
                model=self.model._meta.label_lower,
                objects=selected,
            )
        return response


def _refusal(exc: ratelimit.RateLimited | ratelimit.RateLimiterUnavailable) -> HttpResponse:
    """429 (or 503 when the counters cannot be read), plain text, with Retry-After."""
    if isinstance(exc, ratelimit.RateLimited):
        text = gettext("Too many failed logins. Try again in %(seconds)d seconds.") % {
            "seconds": exc.retry_after
        }
    else:
        text = gettext("Logging in is not possible at the moment. Try again shortly.")
    response = HttpResponse(
        text + "\n", content_type="text/plain; charset=utf-8", status=HTTPStatus(exc.status)
    )
    response["Retry-After"] = str(exc.retry_after)
    response["Cache-Control"] = "no-store"
    return response


def admin_allowed(address: str) -> bool:
    """True if PORTAL_ADMIN_NETWORKS is unset or `address` is in one of its networks."""
    networks = settings.PORTAL_ADMIN_NETWORKS
    if not networks:
        return True
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in networks)


class AdminNetworkMiddleware:
    """404 for /admin/ (login included) unless the client is in PORTAL_ADMIN_NETWORKS."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.prefix = ""

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not self.prefix:
            self.prefix = reverse("admin:index")
        if request.path.startswith(self.prefix) and not admin_allowed(client_ip(request)):
            security_event("admin.refused", outcome="outside_admin_networks", path=request.path)
            raise Http404
        return self.get_response(request)
