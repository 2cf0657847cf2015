"""`manage.py import_providers FILE`: apply a provider catalog file, all or nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from providers.services.catalog import CatalogError, import_providers, load_catalog_file


class Command(BaseCommand):
    help = "Create or update providers from a JSON catalog file; on any error import nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "file", type=Path, help="catalog JSON (shared/specs/provider-config.md)"
        )

    def handle(self, *args: Any, file: Path, **options: Any) -> None:
        try:
            result = import_providers(data=load_catalog_file(file))
        except CatalogError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"providers: {result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged; suggestion clients: "
            f"+{result.suggestion_clients_added} -{result.suggestion_clients_removed}"
        )
