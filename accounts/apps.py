"""App config for accounts (the provisioned mailboxes; models arrive with the accounts issue)."""

from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Mail accounts"
