"""Creating and changing mail accounts: the one place every front door goes through."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

from django.contrib.auth.password_validation import (
    CommonPasswordValidator,
    UserAttributeSimilarityValidator,
)
from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from accounts import passwords
from accounts.mailbox import MailboxRequest, get_backend
from accounts.models import (
    AccountStatus,
    CreatedVia,
    MailAccount,
    ReservedName,
    ThirdPartyID,
)
from accounts.services.names import (
    BUILTIN_RESERVED,
    check_local_part,
    normalise_local_part,
    normalise_third_pid,
)
from portal.errors import Conflict, Forbidden, InvalidInput, ServiceUnavailable
from providers.domains import DomainError, to_ascii
from providers.models import ProviderDomain, Registration

logger = logging.getLogger(__name__)

# Characters of generated passwords: no look-alikes (0/O, 1/l/I), so a password read off a
# printed sheet can be typed. 20 of 54 symbols: about 115 bits.
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # noqa: S105
GENERATED_PASSWORD_LENGTH = 20


class AddressTaken(Conflict):
    code = "id_exists"
    default_message = "This address, email address or phone number is already taken."


class RegistrationDisabled(Forbidden):
    code = "reg_disabled"
    default_message = "Registration is not open for this domain."


class WeakPassword(InvalidInput):
    code = "weak_password"
    default_message = "The password does not meet the provider's policy."


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    default_message = "The account database is not reachable; try again shortly."


class _PolicyFields:
    """The one thing the similarity validator asks of `_meta`: a readable field name."""

    names: ClassVar[dict[str, str]] = {
        "local_part": "user name",
        "full_name": "full name",
        "email": "email address",
    }

    def get_field(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(verbose_name=self.names[name])


@dataclass(frozen=True)
class _PolicySubject:
    """What the similarity validator compares a password with."""

    local_part: str
    full_name: str
    email: str
    # Read when a password is too similar (Django names the attribute in its message).
    _meta: ClassVar[_PolicyFields] = _PolicyFields()


def generate_password() -> str:
    """A random password that meets every provider's policy (from `secrets`)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(GENERATED_PASSWORD_LENGTH))


def reserved_names() -> frozenset[str]:
    return BUILTIN_RESERVED | frozenset(ReservedName.objects.values_list("name", flat=True))


def hosted_domain(domain: str) -> ProviderDomain:
    """The ProviderDomain of a hosted provider for a typed domain, or RegistrationDisabled."""
    try:
        ascii_name = to_ascii(domain)
    except DomainError:
        raise RegistrationDisabled("This domain is not hosted here.") from None
    found = (
        ProviderDomain.objects.select_related("provider")
        .filter(name=ascii_name, provider__hosted=True)
        .first()
    )
    if found is None:
        raise RegistrationDisabled("This domain is not hosted here.")
    return found


def check_password_policy(
    password: str, *, domain: ProviderDomain, local_part: str, full_name: str = "", email: str = ""
) -> None:
    """Raise WeakPassword with every reason `password` is refused for this provider."""
    provider = domain.provider
    problems = []
    if len(password) < provider.password_min_length:
        problems.append(f"Use at least {provider.password_min_length} characters.")
    if any(ord(char) < 32 or ord(char) == 127 for char in password):
        problems.append("The password cannot contain control characters.")
    subject = _PolicySubject(local_part=local_part, full_name=full_name, email=email)
    validators = (
        CommonPasswordValidator(),
        UserAttributeSimilarityValidator(user_attributes=("local_part", "full_name", "email")),
    )
    for validator in validators:
        try:
            # Duck-typed: the validators only read the attributes named above.
            validator.validate(password, subject)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems.extend(str(message) for message in exc.messages)
    if problems:
        raise WeakPassword(" ".join(problems))


def check_address_available(domain: ProviderDomain, local_part: str) -> str:
    """The normalised local part if it may be registered now; NameRefused or AddressTaken."""
    normalised = normalise_local_part(local_part)
    check_local_part(normalised, domain.provider, reserved_names())
    if MailAccount.objects.filter(domain=domain, local_part=normalised).exists():
        raise AddressTaken("This address is already taken.")
    return normalised


def available_local_parts(domain: ProviderDomain, candidates: Sequence[str]) -> list[str]:
    """Those of `candidates` that check_address_available would accept now, in order.

    Normalised and without repeats; refused names (rules, reserved) and taken ones are left
    out. Two queries whatever the number of candidates (the suggestion engine asks for
    dozens at once).
    """
    reserved = reserved_names()
    valid: list[str] = []
    for candidate in candidates:
        normalised = normalise_local_part(candidate)
        if normalised in valid:
            continue
        try:
            check_local_part(normalised, domain.provider, reserved)
        except InvalidInput:
            continue
        valid.append(normalised)
    taken = set(
        MailAccount.objects.filter(domain=domain, local_part__in=valid).values_list(
            "local_part", flat=True
        )
    )
    return [name for name in valid if name not in taken]


def check_registration_open(domain: ProviderDomain, created_via: str, token_ok: bool) -> None:
    """Raise RegistrationDisabled unless this front door may create accounts on `domain`."""
    provider = domain.provider
    if created_via == CreatedVia.ADMIN:
        return  # administrators create accounts whatever the public policy
    if not provider.enabled or provider.registration == Registration.CLOSED:
        raise RegistrationDisabled("Registration is closed for this domain.")
    if provider.registration == Registration.TOKEN and not token_ok:
        raise RegistrationDisabled("Registration for this domain needs an invitation.")


def create_account(
    *,
    domain: str | ProviderDomain,
    local_part: str,
    password: str,
    created_via: CreatedVia | str,
    full_name: str = "",
    third_pids: Sequence[tuple[str, str]] = (),
    status: AccountStatus | str = AccountStatus.ACTIVE,
    token_ok: bool = False,
) -> MailAccount:
    """Create a mail account and its mailbox, all or nothing.

    Inputs: a hosted domain (name or row), the typed local part and password, the front
    door it came through, optional third-party IDs as (kind, value). `token_ok` says the
    caller redeemed an onboarding token (needed where registration is "token").
    Errors: `reg_disabled` (domain not hosted, closed, or token needed), `invalid_username`,
    `weak_password`, `invalid_email` / `invalid_msisdn`, `id_exists` (address or a
    third-party ID taken, also when a concurrent request won the race: the unique
    constraints decide), `mailbox_failed` (the backend refused: nothing is kept),
    `database_unavailable`.
    Side effects: one MailAccount row and its ThirdPartyID rows in one transaction, inside
    which the mailbox backend creates the mailbox.
    """
    row = domain if isinstance(domain, ProviderDomain) else hosted_domain(domain)
    check_registration_open(row, str(created_via), token_ok)
    normalised = check_address_available(row, local_part)
    pids = [(kind, normalise_third_pid(kind, value)) for kind, value in third_pids]
    if len(set(pids)) != len(pids):
        raise InvalidInput("The same third-party ID is listed twice.", code="invalid_third_pid")
    email = next((value for kind, value in pids if kind == "email"), "")
    check_password_policy(
        password, domain=row, local_part=normalised, full_name=full_name, email=email
    )
    encoded = passwords.hash_password(password)  # slow: outside the transaction
    account = MailAccount(
        domain=row,
        local_part=normalised,
        password=encoded,
        full_name=full_name.strip(),
        status=status,
        created_via=created_via,
    )
    try:
        with transaction.atomic():
            account.save()
            ThirdPartyID.objects.bulk_create(
                ThirdPartyID(account=account, kind=kind, value=value) for kind, value in pids
            )
            backend = get_backend()
            backend.create(_mailbox_request(account, password))
            if account.status != AccountStatus.ACTIVE:
                # A pending or disabled account must not log in on a mail server that keeps
                # its own users (the sql backend's view lists active accounts only).
                backend.disable(account.address)
    except IntegrityError:
        raise AddressTaken() from None
    except OperationalError as exc:
        logger.error("account creation for %s: database unavailable: %s", row.name, exc)
        raise DatabaseUnavailable() from None
    logger.info(
        "account created: %s via %s (status %s)", account.address, created_via, account.status
    )
    return account


def set_password(*, account: MailAccount, password: str, check_policy: bool = True) -> None:
    """Give the account a new password; the mail server sees it at once.

    Errors: `weak_password` (unless check_policy is off, for generated passwords),
    `mailbox_failed`. Side effects: the hash and password_changed_at are updated inside a
    transaction in which the backend changes the mailbox.
    """
    if check_policy:
        email = account.third_pids.filter(kind="email").values_list("value", flat=True).first()
        check_password_policy(
            password,
            domain=account.domain,
            local_part=account.local_part,
            full_name=account.full_name,
            email=email or "",
        )
    account.password = passwords.hash_password(password)
    account.password_changed_at = timezone.now()
    with transaction.atomic():
        account.save(update_fields=["password", "password_changed_at", "updated_at"])
        get_backend().set_password(_mailbox_request(account, password))
    logger.info("password changed: %s", account.address)


def reset_password(*, account: MailAccount) -> str:
    """Give the account a new random password and return it (the only moment it exists)."""
    password = generate_password()
    set_password(account=account, password=password, check_policy=False)
    return password


def set_status(*, account: MailAccount, status: AccountStatus) -> bool:
    """Disable or enable an account; False if it already had that status."""
    if account.status == status:
        return False
    with transaction.atomic():
        updated = (
            MailAccount.objects.filter(pk=account.pk)
            .exclude(status=status)
            .update(status=status, updated_at=timezone.now())
        )
        if not updated:
            return False
        backend = get_backend()
        if status == AccountStatus.ACTIVE:
            backend.enable(account.address)
        else:
            backend.disable(account.address)
    account.status = status
    logger.info("account %s: status %s", account.address, status)
    return True


def delete_account(*, account: MailAccount) -> None:
    """Delete the account row and its mailbox together."""
    address = account.address
    with transaction.atomic():
        account.delete()
        get_backend().delete(address)
    logger.info("account deleted: %s", address)


def _mailbox_request(account: MailAccount, password: str | None) -> MailboxRequest:
    return MailboxRequest(
        address=account.address,
        password_hash=passwords.dovecot_form(account.password),
        quota_mb=account.effective_quota_mb,
        full_name=account.full_name,
        password=password,
    )
