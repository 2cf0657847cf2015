"""`manage.py generate_vapid_keys`: a new RFC 8292 VAPID key pair for the settings."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from pushproxy import webpush


class Command(BaseCommand):
    help = "Print a new VAPID key pair: the private key for the settings, the public for apps."

    def handle(self, *args: Any, **options: Any) -> None:
        key = webpush.generate_vapid_key()
        raw = key.private_numbers().private_value.to_bytes(32, "big")
        self.stdout.write(f"PUSHPROXY_VAPID_PRIVATE_KEY={webpush.b64url_encode(raw)}")
        self.stdout.write(
            f"# applicationServerKey for apps (PushManager.subscribe): "
            f"{webpush.application_server_key(key)}"
        )
