"""Document views of providers: the autoconfig endpoints mail clients fetch.

DCACCOUNT (also called by a mail client, Delta Chat) is in providers/api.py, for its schema.
"""

from __future__ import annotations

import functools
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port
from django.utils.cache import patch_cache_control
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from providers import autoconfig
from providers.services import documents

logger = logging.getLogger(__name__)

XML = "text/xml; charset=utf-8"


class _BadRequest(Exception):
    pass


def _plain(status: int, message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")


def _requested_domain(request: HttpRequest, address: str | None) -> str | None:
    """The provider domain asked for: from the address if given, else from the Host header.

    Raises _BadRequest for an address that is not one. None: no provider has that domain.
    """
    if address:
        local, at, domain = address.strip().rpartition("@")
        if not at or not local:
            raise _BadRequest("emailaddress must be a mail address such as user@example.org.")
        ascii_domain = documents.normalise_domain(domain)
        if ascii_domain is None:
            raise _BadRequest("The domain of emailaddress is not a valid domain name.")
        return ascii_domain
    host, _port = split_domain_port(request.get_host())
    return documents.provider_for_host(host)


def _cacheable(
    request: HttpRequest, document: documents.Document, content_type: str
) -> HttpResponse:
    if document.etag in _etags(request.headers.get("If-None-Match", "")):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(document.body, content_type=content_type)
    response["ETag"] = document.etag
    patch_cache_control(response, public=True, max_age=settings.AUTOCONFIG_MAX_AGE)
    return response


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@require_GET
def thunderbird_autoconfig(request: HttpRequest) -> HttpResponse:
    """clientConfig 1.1 on /.well-known/autoconfig/mail/ and /mail/ (specs/autoconfig.md)."""
    try:
        domain = _requested_domain(request, request.GET.get("emailaddress"))
    except _BadRequest as exc:
        return _plain(400, str(exc))
    document = documents.client_config(domain) if domain else None
    if document is None:
        return _plain(404, "No provider is configured for this domain.")
    return _cacheable(request, document, XML)


@csrf_exempt  # mail clients post without a session; the view changes nothing
@require_http_methods(["GET", "POST"])
def autodiscover(request: HttpRequest) -> HttpResponse:
    """Outlook Autodiscover: POST with a request document, or GET (Delta Chat) with none."""
    try:
        if request.method == "POST":
            if int(request.META.get("CONTENT_LENGTH") or 0) > settings.AUTODISCOVER_MAX_BYTES:
                raise autoconfig.MalformedRequest("request too large")
            address = autoconfig.parse_autodiscover_request(
                request.body, max_bytes=settings.AUTODISCOVER_MAX_BYTES
            )
        else:
            address = request.GET.get("emailaddress")
        domain = _requested_domain(request, address)
    except (autoconfig.MalformedRequest, _BadRequest, ValueError) as exc:
        logger.info("autodiscover: refused request: %s", exc)
        return _plain(400, f"Malformed Autodiscover request: {exc}")
    info = documents.provider_info(domain) if domain else None
    if info is None:
        return _plain(404, "No provider is configured for this domain.")
    response = HttpResponse(autoconfig.autodiscover_response(info, address), content_type=XML)
    patch_cache_control(response, private=True, no_cache=True)
    return response


@functools.cache
def _mobileconfig_signer() -> autoconfig.Signer | None:
    if not settings.PORTAL_MOBILECONFIG_CERT:
        return None
    return autoconfig.Signer.from_pem_files(
        settings.PORTAL_MOBILECONFIG_CERT, settings.PORTAL_MOBILECONFIG_KEY
    )


@require_GET
def mobileconfig(request: HttpRequest) -> HttpResponse:
    """Apple configuration profile for one address, signed when a certificate is configured."""
    address = request.GET.get("emailaddress", "").strip()
    if not address:
        return _plain(400, "Add ?emailaddress=you@example.org: the profile is per address.")
    try:
        domain = _requested_domain(request, address)
    except _BadRequest as exc:
        return _plain(400, str(exc))
    info = documents.provider_info(domain) if domain else None
    if info is None:
        return _plain(404, "No provider is configured for this domain.")
    # The profile's UUIDs derive from the address: normalise the domain so that
    # "a@Example.ORG" and "a@example.org" get the same profile.
    address = f"{address.rpartition('@')[0]}@{domain}"
    try:
        body = autoconfig.mobileconfig(info, address, signer=_mobileconfig_signer())
    except ValueError as exc:
        return _plain(404, f"No profile for this provider: {exc}")
    response = HttpResponse(body, content_type="application/x-apple-aspen-config")
    response["Content-Disposition"] = f'attachment; filename="{domain}.mobileconfig"'
    patch_cache_control(response, private=True, no_cache=True)
    return response
