"""`manage.py onboarding_sheet --token NAME --out F.pdf`: print a token's code as a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.errors import PortalError
from providers import qr, sheets
from providers.models import OnboardingToken
from providers.services import onboarding

FORMATS = (".pdf", ".svg", ".png")


class Command(BaseCommand):
    help = (
        "Write a token's DCACCOUNT code as an A4 PDF page (or .svg/.png). The portal keeps "
        "only a hash of the token: give its code (the last line create_onboarding_token "
        "printed) on standard input, or --new-secret to replace it (old codes stop working)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--token", required=True, help="the token's name")
        parser.add_argument("--out", required=True, type=Path, help="F.pdf, F.svg or F.png")
        parser.add_argument(
            "--new-secret",
            action="store_true",
            help="give the token a new secret first (codes printed before stop working)",
        )

    def handle(self, *args: Any, token: str, out: Path, new_secret: bool, **options: Any) -> None:
        if out.suffix.lower() not in FORMATS:
            raise CommandError(f"--out must end in {', '.join(FORMATS)}")
        row = OnboardingToken.objects.filter(name=token).select_related("domain__provider").first()
        if row is None:
            raise CommandError(f"No onboarding token named {token!r}.")
        if new_secret:
            issued = onboarding.replace_secret(token=row)
            self.stderr.write("The token has a new secret: codes printed before stop working.")
        else:
            issued = onboarding.IssuedToken(token=row, secret=self._secret_from_stdin(row))
        try:
            card = onboarding.token_card(issued)
        except qr.QRFormatError as exc:
            raise CommandError(str(exc)) from None
        suffix = out.suffix.lower()
        if suffix == ".pdf":
            data = sheets.pdf([card], poster=True, title=row.name)
        elif suffix == ".svg":
            data = qr.svg(card.qr_text)
        else:
            data = qr.png(card.qr_text)
        out.write_bytes(data)
        self.stdout.write(f"{out}: {row.name} ({row.uses_left} of {row.max_uses} uses left)")
        if new_secret:
            self.stdout.write(card.qr_text)

    def _secret_from_stdin(self, row: OnboardingToken) -> str:
        if sys.stdin.isatty():
            raise CommandError(
                "Give the token's DCACCOUNT code on standard input (or use --new-secret)."
            )
        lines = sys.stdin.read().strip().splitlines()
        try:
            return onboarding.secret_from_code(token=row, code=lines[-1] if lines else "")
        except PortalError as exc:
            raise CommandError(exc.message) from None
