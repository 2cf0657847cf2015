"""The health check and the OpenAPI schema."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest
from django.conf import settings


@pytest.mark.django_db
def test_healthz_reports_database_and_redis(client: Any) -> None:
    response = client.get("/healthz")

    assert response.status_code == HTTPStatus.OK
    body = response.json()
    assert body["database"] == "ok"
    assert body["redis"] == ("ok" if settings.HAS_REDIS else "not configured")
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_healthz_reports_redis_reachable_when_configured(client: Any, redis_client: Any) -> None:
    response = client.get("/healthz")

    assert response.json()["redis"] == "ok"


@pytest.mark.django_db
def test_healthz_answers_503_when_redis_is_down(client: Any, settings: Any) -> None:
    settings.HAS_REDIS = True
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            # Port 9 (discard) on loopback: nothing listens, so the connection is refused.
            "LOCATION": "redis://127.0.0.1:9/0",
            "OPTIONS": {"socket_connect_timeout": 1},
        }
    }

    response = client.get("/healthz")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json() == {"status": "down", "database": "ok", "redis": "down"}


@pytest.mark.django_db
def test_api_schema_is_openapi_3(client: Any) -> None:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == HTTPStatus.OK
    assert response.json()["openapi"].startswith("3.")
