"""The hosted registration flow (/register/<slug>/): its signed state, each step's checks,
and the account and clientConfig it ends in.

The flow's state (names, chosen address, whether an onboarding token was accepted) travels
in the page as one value signed with SECRET_KEY and timestamped (django.core.signing):
nothing a person can edit to register another address, and nothing stored on the server
for visitors who never finish. Every step re-checks what it relies on; the last one hands
the address to accounts.services.accounts.create_account, which checks it again under the
database's unique constraint.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

from django.conf import settings
from django.core import signing
from django.utils.translation import gettext
from django.views.decorators.debug import sensitive_variables

from accounts.services.accounts import (
    AddressTaken,
    DatabaseUnavailable,
    WeakPassword,
    awaits_approval,
    check_address_available,
    create_account,
)
from portal.errors import InvalidInput, NotFound, PortalError, ServiceUnavailable
from providers import autoconfig, provisioner
from providers.domains import to_unicode
from providers.models import Provider, ProviderDomain, Registration
from providers.services import onboarding
from providers.services.suggest import check_name_query, suggest_addresses

logger = logging.getLogger(__name__)

_SALT = "providers.services.registration.flow"
CREATED_VIA = "hosted"  # accounts.models.CreatedVia.HOSTED_PAGE


class ProviderNotFound(NotFound):
    code = "not_found"
    default_message = "No provider registers under this name here."


class FlowInvalid(InvalidInput):
    """The page's state was changed, cut, or belongs to another provider's flow."""

    code = "flow_invalid"
    default_message = "This form was changed or belongs to another registration."


class FlowExpired(InvalidInput):
    code = "flow_expired"
    default_message = "This page is too old."


class InvitationRefused(InvalidInput):
    code = "invalid_token"
    default_message = "This onboarding token is not valid."


class ProviderMisconfigured(ServiceUnavailable):
    """The provider's settings cannot make a clientConfig (no servers, say): nothing created."""

    code = "provider_misconfigured"
    default_message = "The provider's mail server settings are incomplete."


@dataclass(frozen=True)
class Flow:
    """Where one person's registration stands; signed into each page (see `sign`)."""

    slug: str
    first_name: str = ""
    last_name: str = ""
    local_part: str = ""  # normalised, "" until an address was accepted
    domain: str = ""  # A-label of the chosen domain
    token_id: int = 0  # the onboarding token accepted on the token step (0: none)

    @property
    def token_ok(self) -> bool:
        return self.token_id != 0

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}" if self.local_part else ""

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def sign(self) -> str:
        return signing.dumps(asdict(self), salt=_SALT, compress=True)


_FIELDS: dict[str, type] = {
    "slug": str,
    "first_name": str,
    "last_name": str,
    "local_part": str,
    "domain": str,
    "token_id": int,
}


def read_flow(signed: str, *, slug: str) -> Flow:
    """The Flow signed into a page, or FlowExpired / FlowInvalid.

    Invalid: not signed by us (tampered, truncated), not a flow, or another provider's.
    Expired: older than REGISTRATION_FLOW_MAX_AGE seconds.
    """
    try:
        data: Any = signing.loads(signed, salt=_SALT, max_age=settings.REGISTRATION_FLOW_MAX_AGE)
    except signing.SignatureExpired:
        raise FlowExpired(gettext("This page is too old.")) from None
    except signing.BadSignature:
        raise FlowInvalid(gettext("This form was changed or is incomplete.")) from None
    if (
        not isinstance(data, dict)
        or set(data) != set(_FIELDS)
        or not all(isinstance(data[key], kind) for key, kind in _FIELDS.items())
    ):
        raise FlowInvalid()
    flow = Flow(**data)
    if flow.slug != slug:
        raise FlowInvalid(gettext("This form belongs to another provider."))
    return flow


def provider_for_page(slug: str) -> Provider:
    """The hosted provider registering under `slug`, with its domains; ProviderNotFound.

    Disabled and closed providers are returned too: their page says so (registration_gate).
    """
    provider: Provider | None = (
        Provider.objects.filter(slug=slug, hosted=True).prefetch_related("domains").first()
    )
    if provider is None:
        raise ProviderNotFound(gettext("No provider registers under this name here."))
    return provider


def start_flow(*, provider: Provider, raw_query: bytes | str) -> tuple[Flow, str, str]:
    """The first state for a page opened with `raw_query`, and the address to pre-fill.

    Returns (flow, local part, domain): the local part and domain come from `email` when it
    names one of the provider's domains, else the local part alone with the main domain.
    Names are kept as sent (cut to a sane length), for the person to correct.
    """
    query = provisioner.parse_registration_query(raw_query)
    local, _at, domain = query.email.rpartition("@")
    domains = [row.name for row in _domains(provider)]
    chosen = domain.lower() if domain.lower() in domains else (domains[0] if domains else "")
    flow = Flow(
        slug=provider.slug,
        first_name=_printable(query.first_name)[:200],
        last_name=_printable(query.last_name)[:200],
        domain=chosen,
    )
    return flow, _printable(local)[:64], chosen


def redeem_invitation(*, provider: Provider, flow: Flow, token: str) -> Flow:
    """The flow with its onboarding token accepted, or InvitationRefused (saying why).

    The token (the code's secret, its DCACCOUNT text or URL) must be this provider's and
    able to create an account now; no use is counted until the account is made (register).
    The flow's address is then at the token's domain, the one it was issued for.
    `database_unavailable` passes through (not the token's fault).
    """
    secret = token.strip().rsplit("/", 1)[-1].rsplit("t=", 1)[-1]
    try:
        found = onboarding.usable_token(secret=secret, provider=provider)
    except DatabaseUnavailable:
        raise
    except PortalError as exc:
        logger.info("registration %s: onboarding token refused: %s", provider.slug, exc.code)
        raise InvitationRefused(describe_error(exc)) from None
    return replace(flow, token_id=found.pk, domain=found.domain.name)


def choose_address(
    *,
    provider: Provider,
    flow: Flow,
    first_name: str,
    last_name: str,
    local_part: str,
    domain: str,
) -> Flow:
    """The flow with the person's names and a free address of the provider.

    Errors: `name_missing`, `name_too_long`, `invalid_name` (the names: the mail client
    needs a real name), `reg_disabled` (closed meanwhile, or the domain is not this
    provider's), `invalid_domain` (a flow with an onboarding token: not the token's domain),
    `invalid_username` (the provider's rules, reserved names), `id_exists`.
    """
    query = check_name_query(first_name=first_name, last_name=last_name)
    row = _domain_row(provider, domain)
    _check_open(provider, flow)
    if flow.token_ok and row.name != flow.domain:  # redeem_invitation set the token's
        raise InvalidInput(_token_domain_message(flow.domain), code="invalid_domain")
    normalised = check_address_available(row, local_part)
    return replace(
        flow,
        first_name=query.first_name,
        last_name=query.last_name,
        local_part=normalised,
        domain=row.name,
    )


def alternatives(*, provider: Provider, flow: Flow, typed: str = "") -> list[str]:
    """Free addresses to offer instead of a taken or refused one (the suggestion engine).

    From the person's names; with no usable name, from what they typed. Reads only.
    """
    names = [(flow.first_name, flow.last_name), (typed, "")]
    for first, last in names:
        if not (first.strip() or last.strip()):
            continue
        try:
            query = check_name_query(first_name=first, last_name=last)
        except InvalidInput:
            continue
        found = suggest_addresses(provider=provider, query=query)
        if found:
            return found
    return []


@dataclass(frozen=True)
class Registered:
    """A finished registration. `document` is None while the account awaits approval."""

    address: str
    full_name: str
    document: bytes | None


@sensitive_variables()  # the password, and the document and partial that carry it
def register(*, provider: Provider, flow: Flow, password: str) -> Registered:
    """Create the flow's account with `password`; its clientConfig with the credentials.

    The clientConfig is built before the account exists, so a provider whose settings
    cannot make one creates nothing (`provider_misconfigured`). Errors: `flow_invalid` (no
    address chosen yet), `weak_password` (the provider's policy, or a character an XML
    document cannot carry), and create_account's: `reg_disabled`, `invalid_username`,
    `id_exists` (also when the address was taken since it was chosen, or the form is
    replayed), `mailbox_failed`, `database_unavailable`.
    With an onboarding token accepted on the token step, also `token_unknown` (gone, or not
    for this provider and the flow's domain), `token_revoked`, `token_expired`,
    `token_used_up` (it changed since).
    Side effects: the account and its mailbox (create_account); with a token, one use of
    it, counted as for DCACCOUNT (providers.services.onboarding). Call outside a
    transaction.
    """
    if not flow.local_part:
        raise FlowInvalid()
    if not autoconfig.xml_safe(password):
        raise WeakPassword(gettext("The password contains a character that cannot be used."))
    row = _domain_row(provider, flow.domain)
    try:
        document = autoconfig.account_config(
            provider.autoconfig_info(), email=flow.address, password=password
        )
    except ValueError as exc:
        logger.error("registration %s: no clientConfig can be built: %s", provider.slug, exc)
        raise ProviderMisconfigured() from None
    create = partial(
        create_account,
        domain=row,
        local_part=flow.local_part,
        password=password,
        created_via=CREATED_VIA,
        full_name=flow.full_name,
    )
    if flow.token_id:
        # The token's use is counted now, with the account (and given back if it fails).
        token = onboarding.token_for_flow(flow.token_id, domain=row)
        with onboarding.claimed_use(token) as now:
            account = create(
                token_ok=True,
                onboarding_token=token,
                expires_at=onboarding.account_expiry(token, now),
            )
    else:
        account = create()
    pending = awaits_approval(account)
    return Registered(
        address=account.address,
        full_name=account.full_name,
        document=None if pending else document,
    )


def exit_document(
    *, provider: Provider | None, code: str, message: str, fallback_domain: str = ""
) -> bytes:
    """The account provisioner's USER_BACK / USER_CANCEL / ERROR document for this provider.

    Named by the provider's main domain, read from the domains provider_for_page fetched
    (no query: this also answers when the database is gone); without a provider (it could
    not be read), by `fallback_domain`.
    """
    domains = _domains(provider) if provider is not None else []
    domain = domains[0].name if domains else fallback_domain
    return autoconfig.error_document(domain or "invalid", code, message)


def describe_error(error: PortalError) -> str:
    """A translated sentence for the person, whatever language the service raised in."""
    messages = {
        AddressTaken.code: gettext("This address is already taken."),
        "reg_disabled": gettext("Registration is not open here at the moment."),
        "database_unavailable": gettext(
            "The account database is not reachable right now; nothing was created."
        ),
        "mailbox_failed": gettext(
            "The mail server could not set up the mailbox; nothing was created."
        ),
        ProviderMisconfigured.code: gettext(
            "The provider's mail server settings are incomplete; nothing was created."
        ),
        "name_missing": gettext("Enter your first or last name: your mail program shows it."),
        "name_too_long": gettext("A name part may have at most 200 characters."),
        "invalid_name": gettext("A name cannot hold control characters."),
        onboarding.TokenUnknown.code: gettext("This onboarding token is not valid."),
        onboarding.TokenOfAnotherProvider.code: gettext(
            "This onboarding token belongs to another provider: use it on that provider's "
            "registration page."
        ),
        onboarding.TokenRevoked.code: gettext("This onboarding token has been withdrawn."),
        onboarding.TokenExpired.code: gettext("This onboarding token has expired."),
        onboarding.TokenUsedUp.code: gettext("This onboarding token has been used up."),
        onboarding.ApprovalRequired.code: gettext(
            "This provider approves every new account by hand, so an onboarding token cannot "
            "create one."
        ),
    }
    return messages.get(error.code, error.message)


def describe_failure(error: PortalError) -> str:
    """describe_error for the ERROR document of the last step: says that nothing was created.

    For register's errors that end the flow (the others are shown on the page): the mail
    server, the database, the provider's settings (describe_error says it already), and an
    onboarding token that changed since the token step.
    """
    messages = {
        onboarding.TokenUnknown.code: gettext(
            "This onboarding token is no longer valid; nothing was created."
        ),
        onboarding.TokenRevoked.code: gettext(
            "This onboarding token has been withdrawn meanwhile; nothing was created."
        ),
        onboarding.TokenExpired.code: gettext(
            "This onboarding token has expired meanwhile; nothing was created."
        ),
        onboarding.TokenUsedUp.code: gettext(
            "This onboarding token has been used up meanwhile; nothing was created."
        ),
    }
    return messages.get(error.code) or describe_error(error)


def _check_open(provider: Provider, flow: Flow) -> None:
    gate = provider.registration_gate()
    if gate == Registration.CLOSED or (gate == Registration.TOKEN and not flow.token_ok):
        raise InvalidInput(gettext("Registration is not open here."), code="reg_disabled")


def _domains(provider: Provider) -> list[ProviderDomain]:
    return list(provider.domains.all())


def _domain_row(provider: Provider, domain: str) -> ProviderDomain:
    for row in _domains(provider):
        if row.name == domain:
            row.provider = provider  # the account checks read the provider's rules from it
            return row
    raise InvalidInput(gettext("Choose one of the provider's domains."), code="reg_disabled")


def _token_domain_message(domain: str) -> str:
    return gettext("Your onboarding token is for addresses at %(domain)s.") % {
        "domain": to_unicode(domain)
    }


# Format characters that are part of how names are written: the zero-width non-joiner
# (Persian, Kurdish; German ligature control) and the zero-width joiner (Indic scripts,
# emoji sequences). Every other format character goes: bidi embeddings, overrides and
# isolates (U+202A-U+202E, U+2066-U+2069) that make a name display as something else, the
# bidi marks, soft hyphens, byte-order marks.
_KEPT_FORMAT = frozenset({"\u200c", "\u200d"})


def _printable(value: str) -> str:
    """A raw name from the entry URL, safe to show and keep: every kind of space (no-break,
    thin, line separator) becomes a plain space; controls (Cc), format characters other
    than the joiners, surrogates, private-use and unassigned code points are dropped."""
    kept = []
    for char in value:
        if unicodedata.category(char) in ("Zs", "Zl", "Zp"):
            kept.append(" ")
        elif char.isprintable() or char in _KEPT_FORMAT:
            kept.append(char)
    return "".join(kept).strip()
