"""`manage.py create_onboarding_token`: issue a DCACCOUNT token; its code is the last line."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.errors import PortalError
from providers import durations, qr
from providers.domains import DomainError, to_ascii
from providers.models import OnboardingToken, Provider
from providers.services import onboarding


class Command(BaseCommand):
    help = "Issue an onboarding token and print its DCACCOUNT code on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--provider", required=True, help="the hosted provider's slug")
        parser.add_argument("--name", required=True, help="the token's name (unique)")
        parser.add_argument("--max-uses", type=int, required=True, help="accounts it may create")
        parser.add_argument(
            "--valid-for", required=True, help="how long the code works: 30m, 12h, 7d, 1y, never"
        )
        parser.add_argument(
            "--account-lifetime",
            default="never",
            help="lifetime of the accounts it creates (default never: permanent)",
        )
        parser.add_argument("--prefix", default="", help="address prefix, e.g. tmp.")
        parser.add_argument("--domain", default="", help="one of the provider's domains")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            # Refuse before anything is created: a token whose code cannot be printed is
            # of no use to a script (specs/qr.md: never DCACCOUNT:http://).
            qr.dcaccount_url(settings.PORTAL_BASE_URL, "check")
            valid_for = durations.parse(options["valid_for"])
            lifetime = durations.parse(options["account_lifetime"])
        except (qr.QRFormatError, durations.DurationError) as exc:
            raise CommandError(str(exc)) from None
        provider = Provider.objects.filter(slug=options["provider"]).first()
        if provider is None:
            raise CommandError(f"No provider with the slug {options['provider']!r}.")
        domains = list(provider.domains.all())
        if options["domain"]:
            try:
                wanted = to_ascii(options["domain"])
            except DomainError as exc:
                raise CommandError(str(exc)) from None
            domains = [domain for domain in domains if domain.name == wanted]
        if not domains:
            raise CommandError(f"{provider.name} has no such domain.")
        token = OnboardingToken(
            name=options["name"],
            domain=domains[0],
            max_uses=options["max_uses"],
            account_lifetime=lifetime,
            prefix=options["prefix"],
        )
        try:
            issued = onboarding.issue_token(token=token, valid_for=valid_for)
        except PortalError as exc:
            raise CommandError(exc.message) from None
        expires = issued.token.expires_at.isoformat() if issued.token.expires_at else "never"
        self.stdout.write(
            f"token {issued.token.name!r}: {issued.token.max_uses} uses on "
            f"{issued.token.domain.name}, valid until {expires}, accounts live "
            f"{durations.format_duration(lifetime)}"
        )
        self.stdout.write(issued.dcaccount_text())
