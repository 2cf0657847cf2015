"""The provider list of GET /api/v1/providers: offered providers in the provisioner format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from providers import provisioner
from providers.models import Provider


@dataclass(frozen=True)
class ProviderList:
    entries: list[dict[str, Any]]
    etag: str


def provider_list() -> ProviderList:
    """Every offered provider (Provider.objects.offered) with the fields Thunderbird needs.

    Hosted providers point `api` at this portal's registration page; remote ones at their
    own sign-up URL template. The ETag is a hash of the entries, so it changes exactly when
    what a client sees changes. Two queries.
    """
    providers = Provider.objects.offered().prefetch_related("domains").order_by("name", "pk")
    entries = [_listed(provider).entry() for provider in providers]
    body = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
    return ProviderList(entries=entries, etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _listed(provider: Provider) -> provisioner.ListedProvider:
    domains = list(provider.domains.all())
    api = (
        provisioner.registration_template(settings.PORTAL_BASE_URL, provider.slug)
        if provider.hosted
        else provider.registration_url
    )
    return provisioner.ListedProvider(
        id=domains[0].name,
        label=provider.name,
        paid=not provider.is_free,
        languages=tuple(provider.language_list),
        api=api,
        tos_url=provider.tos_url,
        privacy_url=provider.privacy_url,
        countries=tuple(provider.country_list),
        # The logo uploaded in admin, served by the registration pages (hosted or not).
        icon=(
            f"{settings.PORTAL_BASE_URL.rstrip('/')}/register/{provider.slug}/logo"
            if provider.has_logo
            else ""
        ),
    )
