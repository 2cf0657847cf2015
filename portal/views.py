"""Project-level views: the health check and the page for a refused CSRF check."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portal.pages import strict_page

logger = logging.getLogger(__name__)


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return bool(cursor.fetchone() == (1,))
    except Exception:  # any driver error means "not reachable" to a load balancer
        logger.warning("healthz: database unreachable", exc_info=True)
        return False


def _redis_ok() -> bool:
    try:
        cache.set("healthz", "ok", timeout=10)
        return bool(cache.get("healthz") == "ok")
    except Exception:  # redis-py raises several unrelated types for "down"
        logger.warning("healthz: redis unreachable", exc_info=True)
        return False


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database (and Redis, when configured) answer; 503 otherwise."""
    checks = {"database": "ok" if _database_ok() else "down"}
    if settings.HAS_REDIS:
        checks["redis"] = "ok" if _redis_ok() else "down"
    else:
        checks["redis"] = "not configured"
    healthy = "down" not in checks.values()
    return JsonResponse(
        {"status": "ok" if healthy else "down", **checks}, status=200 if healthy else 503
    )


@strict_page
def csrf_failure(request: HttpRequest, reason: str = "") -> TemplateResponse:
    """CSRF_FAILURE_VIEW: say what happened and how to go on, instead of Django's bare 403.

    A form older than its cookie (cookies cleared, a second tab, an expired page) is the
    usual cause; starting the page again fixes it. `reason` is logged, never shown.
    """
    logger.info("CSRF check refused %s %s: %s", request.method, request.path, reason)
    return TemplateResponse(
        request,
        "csrf_failure.html",
        # The page's folder: /register/demo/address -> /register/demo/ starts the flow again.
        {"restart_url": request.path.rsplit("/", 1)[0] + "/"},
        status=403,
    )
