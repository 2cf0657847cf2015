"""Client identity: the peer address, forwarding headers only from trusted proxies."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from django.test import RequestFactory

from portal.proxies import TrustedProxyMiddleware, client_ip


@pytest.fixture
def trusted(settings: Any) -> None:
    settings.PORTAL_TRUSTED_PROXIES = [ipaddress.ip_network("10.0.0.0/8")]


def test_client_ip_ignores_forwarded_for_from_untrusted_peer(
    rf: RequestFactory, trusted: None
) -> None:
    request = rf.get("/", REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="198.51.100.1")

    assert client_ip(request) == "192.0.2.7"


def test_client_ip_believes_trusted_proxy(rf: RequestFactory, trusted: None) -> None:
    request = rf.get(
        "/", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.1, 10.9.9.9"
    )

    # Rightmost untrusted hop: 198.51.100.1 (203.0.113.9 could be forged by the client).
    assert client_ip(request) == "198.51.100.1"


def test_client_ip_stops_at_garbage_in_the_chain(rf: RequestFactory, trusted: None) -> None:
    request = rf.get("/", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="nonsense")

    assert client_ip(request) == "10.1.2.3"


def test_client_ip_unwraps_ipv4_mapped_peer(rf: RequestFactory) -> None:
    request = rf.get("/", REMOTE_ADDR="::ffff:192.0.2.7")

    assert client_ip(request) == "192.0.2.7"


def test_middleware_strips_forwarding_headers_from_untrusted_peer(
    rf: RequestFactory, trusted: None
) -> None:
    seen = {}

    def view(request: Any) -> Any:
        seen.update(request.META)
        return None

    request = rf.get(
        "/",
        REMOTE_ADDR="192.0.2.7",
        HTTP_X_FORWARDED_PROTO="https",
        HTTP_X_FORWARDED_FOR="1.2.3.4",
        HTTP_X_REAL_IP="1.2.3.4",
    )
    TrustedProxyMiddleware(view)(request)

    assert "HTTP_X_FORWARDED_PROTO" not in seen
    assert "HTTP_X_FORWARDED_FOR" not in seen
    assert "HTTP_X_REAL_IP" not in seen


def test_middleware_keeps_forwarding_headers_from_trusted_proxy(
    rf: RequestFactory, trusted: None
) -> None:
    seen = {}

    def view(request: Any) -> Any:
        seen.update(request.META)
        return None

    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_PROTO="https")
    TrustedProxyMiddleware(view)(request)

    assert seen["HTTP_X_FORWARDED_PROTO"] == "https"
