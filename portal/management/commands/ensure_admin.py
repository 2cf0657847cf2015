"""Create the superuser `admin` once, with PORTAL_ADMIN_PASSWORD or a random password."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the superuser 'admin' if missing; print its password once."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(username=username).exists():
            self.stdout.write(f"Superuser {username!r} exists; its password is unchanged.")
            return
        given = os.environ.get("PORTAL_ADMIN_PASSWORD", "")
        password = given or secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=username, email="", password=password)
        if given:
            self.stdout.write(f"Created superuser {username!r} with PORTAL_ADMIN_PASSWORD.")
        else:
            # The only moment this password exists in clear: shown once, stored hashed.
            self.stdout.write(
                f"Created superuser {username!r} with password {password} (shown once)."
            )
