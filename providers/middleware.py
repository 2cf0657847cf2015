"""Host header check: the portal's own names everywhere, provider domains for autoconfig only."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host

from providers.services import documents

# The paths mail clients fetch from https://<domain>/, autoconfig.<domain> or
# autodiscover.<domain>; nothing else is served under a provider's domain.
AUTOCONFIG_PATHS = frozenset(
    {
        "/.well-known/autoconfig/mail/config-v1.1.xml",
        "/mail/config-v1.1.xml",
        "/autodiscover/autodiscover.xml",
        "/Autodiscover/Autodiscover.xml",
        "/mobileconfig",
    }
)


class HostCheckMiddleware:
    """Replaces Django's ALLOWED_HOSTS check (settings.py explains why it is opened)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # The Host header as sent (X-Forwarded-Host is never believed: USE_X_FORWARDED_HOST
        # is off); the test client and some WSGI servers give only SERVER_NAME.
        raw_host = request.META.get("HTTP_HOST") or request.META.get("SERVER_NAME", "")
        domain, _port = split_domain_port(raw_host)
        if not domain or not (
            validate_host(domain, settings.PORTAL_ALLOWED_HOSTS)
            or (request.path in AUTOCONFIG_PATHS and documents.is_provider_host(domain))
        ):
            # Django answers 400 and logs to django.security.DisallowedHost.
            raise DisallowedHost(f"Invalid HTTP_HOST header: {raw_host!r}.")
        return self.get_response(request)
