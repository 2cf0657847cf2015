"""Who the client is: the peer address, or X-Forwarded-* only from a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

# Headers a client could use to claim another address or scheme. They are removed from the
# request unless the TCP peer is one of PORTAL_TRUSTED_PROXIES (RELIABILITY.md check 11).
FORWARDING_HEADERS = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_REAL_IP",
    "HTTP_FORWARDED",
)


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def is_trusted_proxy(value: str) -> bool:
    address = _parse_ip(value)
    return address is not None and any(
        address in network for network in settings.PORTAL_TRUSTED_PROXIES
    )


def client_ip(request: HttpRequest) -> str:
    """The client's address: walk X-Forwarded-For from the right past trusted proxies only."""
    peer = request.META.get("REMOTE_ADDR", "")
    if not is_trusted_proxy(peer):
        return str(_parse_ip(peer) or peer)
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    for hop in reversed([hop for hop in hops if hop]):
        address = _parse_ip(hop)
        if address is None:
            break  # garbage in the chain: stop believing it, use the last good hop
        peer = str(address)
        if not is_trusted_proxy(peer):
            break
    return str(_parse_ip(peer) or peer)


def client_ip_for_ratelimit(request: HttpRequest) -> str:
    """django-ratelimit's RATELIMIT_IP_META_KEY hook (it groups IPv6 by /64 itself)."""
    return client_ip(request)


class TrustedProxyMiddleware:
    """First in the chain: forget forwarding headers that an untrusted peer sent."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_trusted_proxy(request.META.get("REMOTE_ADDR", "")):
            for header in FORWARDING_HEADERS:
                request.META.pop(header, None)
        return self.get_response(request)
