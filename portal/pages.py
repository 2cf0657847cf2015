"""What every server-rendered page of the portal sends: a strict CSP with a nonce, no-store.

Registration pages use it now, self-service pages will (RELIABILITY.md check 14). A view
decorated with `@strict_page` returns a TemplateResponse; its template finds the nonce as
`csp_nonce` (for the one inline <style> that carries a provider's colours) and includes
`includes/page_head.html` from templates/base.html.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.template.response import SimpleTemplateResponse
from django.utils.cache import add_never_cache_headers, patch_cache_control

# No plug-ins, no <base> tricks, no framing, forms post only here; scripts and styles only
# from this origin (a nonce admits the page's own inline colours).
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'; frame-ancestors 'none'"
)


def content_security_policy(nonce: str) -> str:
    return POLICY.format(nonce=nonce)


def strict_page(
    view: Callable[..., HttpResponseBase],
) -> Callable[..., HttpResponseBase]:
    """Give the response a fresh CSP nonce (in the template context), the CSP and no-store.

    Pages hold a CSRF value, personal data or credentials: no cache may keep them.
    """

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        nonce = secrets.token_urlsafe(16)
        if isinstance(response, SimpleTemplateResponse):
            response.context_data = {**(response.context_data or {}), "csp_nonce": nonce}
        response.headers.setdefault("Content-Security-Policy", content_security_policy(nonce))
        add_never_cache_headers(response)
        patch_cache_control(response, no_store=True)
        return response

    return wrapped
