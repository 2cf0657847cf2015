"""Headers every answer carries that Django does not set: a baseline Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


class ContentSecurityPolicyMiddleware:
    """Add PORTAL_CSP to any answer that has no policy of its own (RELIABILITY.md check 14).

    The baseline forbids plugins, <base> and framing everywhere without restricting the
    admin's scripts and styles; pages that need nothing more (self-service) set a strict
    policy themselves, which this leaves alone.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = settings.PORTAL_CSP
        return response
