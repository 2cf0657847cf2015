"""Rate-limit policies (django-ratelimit) and the 429 answer with Retry-After."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

# The policies themselves (key, group, rate) arrive with the endpoints they guard.


def rate_limited(request: HttpRequest, exception: Exception) -> JsonResponse:
    """django-ratelimit's RATELIMIT_VIEW: 429 (its default would be 403) with Retry-After."""
    retry_after = int(getattr(exception, "retry_after", 60))
    response = JsonResponse(
        {"code": "rate_limited", "message": f"Too many requests; retry in {retry_after} s."},
        status=429,
    )
    response["Retry-After"] = str(retry_after)
    return response
