"""Shared DRF bits: the one exception handler that renders every error as {code, message},
and a content negotiation for protocol endpoints that always answer JSON."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework import exceptions, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from portal.errors import PortalError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """PortalError -> its status and {code, message}; DRF's own errors in the same shape."""
    if isinstance(exc, PortalError):
        # Rate limits and unavailable services say when to come back (RFC 9110 Retry-After).
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return Response(exc.as_dict(), status=exc.status, headers=headers)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django's 500 handling and logging take over
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "code": "invalid",
            "message": "Some of the input is not valid.",
            "fields": exc.detail,
        }
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = {
            "code": codes if isinstance(codes, str) else "error",
            "message": str(exc.detail) if isinstance(exc.detail, str) else "Request refused.",
        }
    if response.status_code == status.HTTP_429_TOO_MANY_REQUESTS:
        response.data["code"] = "rate_limited"
    return response


class FirstRenderer(BaseContentNegotiation):
    """Answer in the view's first renderer whatever Accept says (DRF's "ignoring client
    content negotiation"): for clients that send a browser's Accept, or an odd one, and
    must still get the JSON their protocol defines (Delta Chat's DCACCOUNT call)."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type
