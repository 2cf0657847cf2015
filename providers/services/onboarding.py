"""Issuing, revoking and redeeming onboarding tokens (DCACCOUNT codes; specs/qr.md).

A token's uses are counted here and nowhere else. Redeeming claims one use with a single
conditional UPDATE that commits on its own (RELIABILITY.md invariant 3: `use_count` can
never pass `max_uses`, whatever the concurrency), and only then creates the account through
accounts.services.accounts.create_account, which must run outside any transaction (it
commits the row before asking the mail server). If the account is not created, a
compensating UPDATE gives the use back.

Accepted gap: a process that dies between the claim and the account's commit (or before
the give-back) leaves a use counted with no account. The token then offers one use less
than printed, never one more; `use_count` may exceed the accounts linked to it by the
number of such crashes. docs/qr.md tells the administrator how to see and repair it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, models
from django.utils import timezone

from accounts.services import accounts as account_services
from portal.audit import security_event
from portal.errors import Forbidden, InvalidInput, PortalError
from providers import qr, sheets
from providers.models import (
    ONBOARDING_RANDOM_LENGTH,
    OnboardingToken,
    Provider,
    ProviderDomain,
    TokenState,
    token_digest,
)

logger = logging.getLogger(__name__)

# secrets.token_urlsafe(24): 32 characters of a 64-symbol alphabet, 192 bits (RELIABILITY.md
# check 9 asks for at least 128).
TOKEN_BYTES = 24
# Random part of new addresses: no look-alikes (l/1, o/0), so an address read off a screen
# can be typed. 32 symbols, 5 bits each.
LOCAL_PART_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
# A random address that is taken is drawn again this often before giving up.
ADDRESS_ATTEMPTS = 3
_DB_DOWN = (OperationalError, InterfaceError)
# accounts.models.CreatedVia.QR_TOKEN: providers reaches accounts only through its services,
# which take the value as text (a test holds the two together).
CREATED_VIA = "qr"


class TokenUnknown(Forbidden):
    code = "token_unknown"
    default_message = "This code is not valid. Ask the person who gave it to you for a new one."


class TokenOfAnotherProvider(Forbidden):
    """A real token, but a registration page of another provider was given it."""

    code = "token_other_provider"
    default_message = "This code belongs to another provider: use it on that provider's page."


class TokenRevoked(Forbidden):
    code = "token_revoked"
    default_message = (
        "This code has been withdrawn by the provider. Ask the person who gave it to you "
        "for a new one."
    )


class TokenExpired(PortalError):
    code = "token_expired"
    status = HTTPStatus.GONE
    default_message = "This code has expired. Ask the person who gave it to you for a new one."


class TokenUsedUp(PortalError):
    code = "token_used_up"
    status = HTTPStatus.GONE
    default_message = (
        "This code has been used as often as it may. Ask the person who gave it to you for "
        "a new one."
    )


class ApprovalRequired(Forbidden):
    code = "approval_required"
    default_message = (
        "This provider approves every new account by hand, so this code cannot create one. "
        "Ask the person who gave it to you."
    )


_REFUSALS: dict[TokenState, type[PortalError]] = {
    TokenState.REVOKED: TokenRevoked,
    TokenState.EXPIRED: TokenExpired,
    TokenState.USED_UP: TokenUsedUp,
}


@dataclass(frozen=True)
class IssuedToken:
    """A token and its secret: the only moment the secret exists outside the code."""

    token: OnboardingToken
    secret: str

    @property
    def url(self) -> str:
        """Where the code's POST goes (also shown when no DCACCOUNT text can be printed)."""
        return f"{settings.PORTAL_BASE_URL}{qr.DCACCOUNT_PATH}{self.secret}"

    def dcaccount_text(self) -> str:
        """`DCACCOUNT:https://…`; qr.QRFormatError when PORTAL_BASE_URL is not https."""
        return qr.dcaccount_text(settings.PORTAL_BASE_URL, self.secret)


@dataclass(frozen=True)
class Redemption:
    """What Delta Chat is told: the new address and password, and how long they last."""

    address: str
    password: str
    lifetime: timedelta | None
    expires_at: datetime | None


def token_card(issued: IssuedToken) -> sheets.Card:
    """The token's printable card (DCACCOUNT code); qr.QRFormatError unless https."""
    provider = issued.token.domain.provider
    language = sheets.language_of(provider.language_list)
    return sheets.Card(
        qr_text=issued.dcaccount_text(),
        title=sheets.NEW_ADDRESS[language].format(domain=issued.token.domain.display_name),
        provider_name=provider.name,
        instructions=sheets.INSTRUCTIONS[language],
        logo_png=sheets.print_logo(bytes(provider.logo), provider.logo_type),
    )


def new_secret() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def issue_token(*, token: OnboardingToken, valid_for: timedelta | None) -> IssuedToken:
    """Save a new token (fields set, not saved yet) with a fresh secret; return both.

    `valid_for` None: the token never expires. The secret is not stored, only its SHA-256.
    Errors: `invalid` with the model's messages (name taken, prefix not allowed by the
    provider, provider requires approval, ...). Side effects: one OnboardingToken row.
    """
    secret = new_secret()
    token.name = token.name.strip()
    token.expires_at = timezone.now() + valid_for if valid_for is not None else None
    token.token_sha256 = token_digest(secret)
    try:
        token.full_clean()
    except ValidationError as exc:
        raise InvalidInput(" ".join(exc.messages)) from None
    token.save(force_insert=True)
    logger.info(
        "onboarding token %s issued: %d uses on %s", token.pk, token.max_uses, token.domain.name
    )
    return IssuedToken(token=token, secret=secret)


def replace_secret(*, token: OnboardingToken) -> IssuedToken:
    """Give `token` a new secret: codes printed before stop working, uses are kept."""
    secret = new_secret()
    token.token_sha256 = token_digest(secret)
    token.save(update_fields=["token_sha256", "updated_at"])
    logger.info("onboarding token %s: new secret", token.pk)
    return IssuedToken(token=token, secret=secret)


def revoke_token(*, token: OnboardingToken) -> bool:
    """Withdraw `token` for good; False if it was revoked already."""
    now = timezone.now()
    revoked = OnboardingToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=now, updated_at=now
    )
    if revoked:
        token.revoked_at = now
        logger.info("onboarding token %s revoked", token.pk)
    return bool(revoked)


def secret_from_code(*, token: OnboardingToken, code: str) -> str:
    """The secret in `code` (a DCACCOUNT text, its URL, mailadm's ?t= URL or the bare
    secret) if it is `token`'s; `invalid` otherwise (a reprint needs the real code)."""
    candidate = code.strip().rsplit("/", 1)[-1].rsplit("t=", 1)[-1]
    if not candidate or not secrets.compare_digest(token_digest(candidate), token.token_sha256):
        raise InvalidInput(f"That is not the code of the token {token.name!r}.")
    return candidate


def redeem_token(*, secret: str) -> Redemption:
    """Create one account with the token whose secret this is (a DCACCOUNT POST).

    Errors, each its own code: those of usable_token, and create_account's
    `mailbox_failed` / `database_unavailable` (503). On any error no account exists and the
    token's use count is as before (module docstring: the gap).
    Side effects: one use claimed (its own commit), one account created through
    create_account and linked to the token.
    """
    token: OnboardingToken | None = None
    try:
        token = usable_token(secret=secret)
        with claimed_use(token) as now:
            redemption = _create_account(token, now)
    except PortalError as exc:
        security_event(
            "token.redeem",
            outcome="refused",
            onboarding=token.pk if token else None,
            reason=exc.code,
        )
        raise
    security_event(
        "token.redeem", outcome="redeemed", actor=redemption.address, onboarding=token.pk
    )
    return redemption


def usable_token(*, secret: str, provider: Provider | None = None) -> OnboardingToken:
    """The token whose secret this is, if it may create an account now (nothing claimed).

    With `provider`, only that provider's tokens count. Errors, each its own code:
    `token_unknown` (403), `token_other_provider` (403; with `provider`, a token of
    another), `token_revoked` (403), `token_expired` (410), `token_used_up` (410),
    `approval_required` (403; the provider approves accounts by hand), `reg_disabled` (403;
    provider disabled or closed), `database_unavailable`.
    """
    try:
        tokens = OnboardingToken.objects.for_secret(secret).select_related("domain__provider")
        token = tokens.first() if secret else None
    except _DB_DOWN as exc:
        raise _database_unavailable("token look-up", exc) from None
    if token is None:
        raise TokenUnknown()
    if provider is not None and token.domain.provider_id != provider.pk:
        raise TokenOfAnotherProvider()
    state = token.state(timezone.now())
    if state != TokenState.USABLE:
        raise _REFUSALS[state]()
    if token.domain.provider.require_approval:
        raise ApprovalRequired()
    account_services.check_registration_open(token.domain, CREATED_VIA, token_ok=True)
    return token


@contextmanager
def claimed_use(token: OnboardingToken) -> Iterator[datetime]:
    """Claim one use of `token` for the block (which creates its account), or refuse.

    The claim commits on its own before the block runs; if the block raises, the use is
    given back. Errors of the claim: `token_revoked`, `token_expired`, `token_used_up`
    (whatever changed since usable_token), `database_unavailable`. Yields the claim's time.
    """
    now = timezone.now()
    _claim(token, now)
    try:
        yield now
    except BaseException:
        _give_back(token)
        raise


def account_expiry(token: OnboardingToken, now: datetime) -> datetime | None:
    """When an account the token creates at `now` ends (None: it stays)."""
    return now + token.account_lifetime if token.account_lifetime else None


def token_for_flow(token_id: int, *, domain: ProviderDomain) -> OnboardingToken:
    """A token a registration page accepted earlier (by id, from its signed state), if it
    is for `domain`, where the account is to be made; `token_unknown` if not (or gone),
    `database_unavailable`."""
    try:
        token = (
            OnboardingToken.objects.select_related("domain__provider")
            .filter(pk=token_id, domain_id=domain.pk)
            .first()
        )
    except _DB_DOWN as exc:
        raise _database_unavailable("token look-up", exc) from None
    if token is None:
        raise TokenUnknown()
    return token


def _claim(token: OnboardingToken, now: datetime) -> None:
    """Count one use, or raise what stands in the way. One statement, committed at once.

    `UPDATE … SET use_count = use_count + 1 WHERE id = … AND revoked_at IS NULL AND
    use_count < max_uses AND (expires_at IS NULL OR expires_at > now)`: the row lock it
    takes serialises concurrent claims, and each re-checks the condition on the row as the
    previous claim left it, so no number of concurrent requests passes max_uses.
    """
    try:
        claimed = (
            OnboardingToken.objects.claimable(now)
            .filter(pk=token.pk)
            .update(use_count=models.F("use_count") + 1, updated_at=now)
        )
        if claimed:
            return
        token.refresh_from_db(fields=["revoked_at", "expires_at", "use_count", "max_uses"])
    except _DB_DOWN as exc:
        raise _database_unavailable("token claim", exc) from None
    raise _REFUSALS.get(token.state(now), TokenUsedUp)()


def _give_back(token: OnboardingToken) -> None:
    """The compensating UPDATE: the claimed use made no account. Best effort (the gap)."""
    try:
        OnboardingToken.objects.filter(pk=token.pk, use_count__gt=0).update(
            use_count=models.F("use_count") - 1, updated_at=timezone.now()
        )
    except _DB_DOWN:
        logger.error("onboarding token %s: a use made no account and was not given back", token.pk)


def _database_unavailable(what: str, exc: Exception) -> PortalError:
    logger.error("%s: database unavailable: %s", what, type(exc).__name__)
    return account_services.DatabaseUnavailable()


def _create_account(token: OnboardingToken, now: datetime) -> Redemption:
    password = account_services.generate_password()
    expires_at = account_expiry(token, now)
    for attempt in range(ADDRESS_ATTEMPTS):
        local_part = token.prefix + "".join(
            secrets.choice(LOCAL_PART_ALPHABET) for _ in range(ONBOARDING_RANDOM_LENGTH)
        )
        try:
            account = account_services.create_account(
                domain=token.domain,
                local_part=local_part,
                password=password,
                created_via=CREATED_VIA,
                token_ok=True,
                onboarding_token=token,
                expires_at=expires_at,
            )
        except account_services.AddressTaken:
            if attempt + 1 == ADDRESS_ATTEMPTS:
                raise
            continue
        return Redemption(
            address=account.address,
            password=password,
            lifetime=token.account_lifetime,
            expires_at=expires_at,
        )
    raise AssertionError("unreachable")  # the loop returns or raises
