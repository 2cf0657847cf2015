"""`manage.py export_providers [--output FILE]`: write every provider as a catalog file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from providers.services.catalog import export_providers


class Command(BaseCommand):
    help = "Print every provider as catalog JSON, the format import_providers reads."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout"
        )

    def handle(self, *args: Any, output: Path | None, **options: Any) -> None:
        catalog = export_providers()
        text = json.dumps(catalog, indent=2, ensure_ascii=False) + "\n"
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"{output}: cannot write the file ({exc}).") from exc
        self.stdout.write(f"exported {len(catalog['providers'])} providers to {output}")
