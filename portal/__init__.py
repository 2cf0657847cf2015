"""The mailportal Django project: settings, URLs, the Celery app and shared edge helpers."""

from __future__ import annotations

from portal.celery import app as celery_app

__all__ = ["celery_app"]
