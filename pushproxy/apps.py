"""App config for the push proxy (models arrive with the push-proxy issue)."""

from __future__ import annotations

from django.apps import AppConfig


class PushproxyConfig(AppConfig):
    name = "pushproxy"
    verbose_name = "Push proxy"
