"""This portal as a provider's suggestion engine: free addresses from a person's name."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import time
import unicodedata
from dataclasses import dataclass

from django.db.models import Q

from accounts.services.accounts import available_local_parts, reserved_names
from portal.errors import Forbidden, InvalidInput, NotFound
from providers import localparts, provisioner
from providers.models import Provider, ProviderDomain, SuggestionClient

logger = logging.getLogger(__name__)

# Candidates are checked against the accounts in batches of this many (two queries a batch),
# at most this many batches: plenty for a common name with many taken numbers.
BATCH = 60
MAX_BATCHES = 4
MAX_NAME_LENGTH = 200
# Control characters (Cc: NUL, escape, line breaks) and lone surrogates (Cs, not text).
_REFUSED_CATEGORIES = {"Cc", "Cs"}


def _refused(char: str) -> bool:
    """Not part of any name: Cc, Cs, and the noncharacters (U+FFFE, U+FFFF and the like),
    which XML cannot carry either (names end up in clientConfig documents)."""
    point = ord(char)
    noncharacter = 0xFDD0 <= point <= 0xFDEF or point & 0xFFFE == 0xFFFE
    return noncharacter or unicodedata.category(char) in _REFUSED_CATEGORIES


class NotAllowed(Forbidden):
    code = "not_allowed"
    default_message = "This address may not ask this provider for suggestions."


@dataclass(frozen=True)
class NameQuery:
    """A person's name as typed, with the country (ISO 3166-1 alpha-2, upper case) or ""."""

    first_name: str
    last_name: str
    country: str = ""


def check_name_query(*, first_name: str, last_name: str, country: str = "") -> NameQuery:
    """The query with its parts trimmed and in Unicode NFC, or InvalidInput naming what is
    wrong.

    Codes: `name_missing` (both parts empty), `name_too_long` (a part longer than 200
    characters), `invalid_name` (control characters, lone surrogates, noncharacters),
    `invalid_country`.
    Format characters such as the zero-width non-joiner of Persian names, and any kind of
    space, are part of how names are written and pass.
    """
    first = unicodedata.normalize("NFC", first_name.strip())
    last = unicodedata.normalize("NFC", last_name.strip())
    if not first and not last:
        raise InvalidInput("Give a first or a last name.", code="name_missing")
    for part in (first, last):
        if len(part) > MAX_NAME_LENGTH:
            raise InvalidInput(
                f"A name part may have at most {MAX_NAME_LENGTH} characters.",
                code="name_too_long",
            )
        if any(_refused(char) for char in part):
            raise InvalidInput("A name cannot hold control characters.", code="invalid_name")
    country = country.strip().upper()
    if country and not (len(country) == 2 and country.isascii() and country.isalpha()):
        raise InvalidInput(
            "country must be a two-letter ISO 3166-1 code such as DE.", code="invalid_country"
        )
    return NameQuery(first_name=first, last_name=last, country=country)


def suggest_addresses(*, provider: Provider, query: NameQuery) -> list[str]:
    """Free addresses on the provider's main domain for this name, best first.

    At most the provider's suggestion count. Each is valid under the provider's name rules,
    not reserved and not taken at the time of asking (accounts.services.accounts decides).
    An empty list when the name yields nothing usable. Reads only.
    """
    domain = _main_domain(provider)
    if domain is None:
        return []
    wanted = provider.effective_suggestion_count
    found: list[str] = []
    stream = localparts.candidates(
        query.first_name,
        query.last_name,
        country=query.country,
        max_length=provider.username_max_length,
    )
    reserved: frozenset[str] | None = None  # read with the first batch, once
    for _batch in range(MAX_BATCHES):
        batch = list(itertools.islice(stream, BATCH))
        if not batch:
            break
        if reserved is None:
            reserved = reserved_names()
        available = available_local_parts(domain, batch, reserved=reserved)
        found += [name for name in available if name not in found]
        if len(found) >= wanted:
            break
    return [f"{local_part}@{domain.name}" for local_part in found[:wanted]]


def hosted_answer(*, provider: Provider, query: NameQuery) -> provisioner.Answer:
    """suggest_addresses as one entry of the provisioner format (for the fan-out too).

    `declined`, as a remote provider's `succeeded: false`, when the provider is not offered
    to clients (the provider list's rule, Provider.missing_list_fields: disabled, no terms
    or privacy URL, registration closed or by invitation only) or when the name yields
    nothing usable. Reads only.
    """
    started = time.perf_counter()
    domain = _main_domain(provider)
    provider_id = domain.name if domain else ""
    missing = provider.missing_list_fields()
    if missing or domain is None:
        why = ", ".join(missing) or "no domain"
        return provisioner.failed(provider_id, provisioner.DECLINED, f"not offered: {why}")
    addresses = suggest_addresses(provider=provider, query=query)
    latency_ms = round((time.perf_counter() - started) * 1000)
    return provisioner.hosted_answer(provider_id, addresses, provider.price, latency_ms)


def check_suggestion_client(*, slug: str, client_address: str, token: str) -> None:
    """NotAllowed unless a suggestion-client row for every hosted provider, or for the
    provider by `slug`, admits `client_address` (the peer, see portal.proxies.client_ip)
    with `token`.

    The first thing /providers/<slug>/suggest checks, before the input and before looking
    the slug up: whoever may not ask learns nothing, not even whether the slug exists or
    what is wrong with a name. One query; it does not tell an unknown slug from a known one.
    """
    try:
        address = ipaddress.ip_address(client_address)
    except ValueError:
        raise NotAllowed() from None
    rows = SuggestionClient.objects.filter(Q(provider__isnull=True) | Q(provider__slug=slug)).only(
        "network", "token_sha256"
    )
    if not any(row.admits(address, token) for row in rows):
        logger.info("suggest %s: refused %s", slug, client_address)
        raise NotAllowed()


def answer_suggestion_client(*, slug: str, query: NameQuery) -> provisioner.Answer:
    """The suggestion entry for an aggregator calling /providers/<slug>/suggest.

    For a caller check_suggestion_client has admitted. Errors: `not_found` (no enabled
    hosted provider by that slug).
    """
    provider = (
        Provider.objects.enabled()
        .filter(slug=slug, hosted=True)
        .prefetch_related("domains")
        .first()
    )
    if provider is None:
        raise NotFound("No hosted provider by that name.")
    return hosted_answer(provider=provider, query=query)


def _main_domain(provider: Provider) -> ProviderDomain | None:
    domains = list(provider.domains.all())  # prefetched by callers that loop
    if not domains:
        return None
    domain = domains[0]
    domain.provider = provider  # the account checks read the provider's rules from it
    return domain
