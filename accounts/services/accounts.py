"""Creating and changing mail accounts: the one place every front door goes through."""

from __future__ import annotations

import functools
import logging
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from types import SimpleNamespace
from typing import ClassVar, ParamSpec

from django.contrib.auth.password_validation import (
    CommonPasswordValidator,
    UserAttributeSimilarityValidator,
)
from django.core.exceptions import ValidationError
from django.db import IntegrityError, InterfaceError, OperationalError, models, transaction
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop
from django.views.decorators.debug import sensitive_variables

from accounts import passwords
from accounts.mailbox import MailboxError, MailboxRequest, get_backend
from accounts.mailbox.base import Usage
from accounts.models import (
    AccountSession,
    AccountStatus,
    CreatedVia,
    MailAccount,
    MailboxState,
    ReservedName,
    ThirdPartyID,
)
from accounts.services import sessions
from accounts.services.names import (
    BUILTIN_RESERVED,
    check_local_part,
    normalise_local_part,
    normalise_third_pid,
)
from portal.audit import current_admin, security_event
from portal.errors import Conflict, Forbidden, InvalidInput, PortalError, ServiceUnavailable
from providers.domains import DomainError, to_ascii
from providers.models import OnboardingToken, ProviderDomain, Registration

logger = logging.getLogger(__name__)

# Characters of generated passwords: no look-alikes (0/O, 1/l/I), so a password read off a
# printed sheet can be typed. 20 of 54 symbols: about 115 bits.
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # noqa: S105
GENERATED_PASSWORD_LENGTH = 20
# Errors of the database connection itself (PostgreSQL or SQLite down, connection lost).
_DB_DOWN = (OperationalError, InterfaceError)


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
        "local_part": gettext_noop("user name"),
        "full_name": gettext_noop("full name"),
        "email": gettext_noop("email address"),
    }

    def get_field(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(verbose_name=gettext(self.names[name]))


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
        problems.append(
            gettext("Use at least %(count)d characters.") % {"count": provider.password_min_length}
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in password):
        problems.append(gettext("The password cannot contain control characters."))
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
    holders = MailAccount.objects.filter(domain=domain, local_part=normalised)
    # An interrupted creation holds the name only until someone asks for it (_insert).
    if holders.exclude(pk__in=MailAccount.objects.interrupted(MailboxState.CREATING)).exists():
        raise AddressTaken(gettext("This address is already taken."))
    return normalised


def available_local_parts(
    domain: ProviderDomain,
    candidates: Sequence[str],
    *,
    reserved: frozenset[str] | None = None,
) -> list[str]:
    """Those of `candidates` that check_address_available would accept now, in order.

    Normalised and without repeats; refused names (rules, reserved) and taken ones are left
    out. Two queries whatever the number of candidates (the suggestion engine asks for
    dozens at once); one if the caller passes `reserved` (reserved_names(), read once for
    several calls).
    """
    if reserved is None:
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
    if created_via == CreatedVia.ADMIN:
        return  # administrators create accounts whatever the public policy
    gate = domain.provider.registration_gate()
    if gate == Registration.CLOSED:
        raise RegistrationDisabled(gettext("Registration is closed for this domain."))
    if gate == Registration.TOKEN and not token_ok:
        raise RegistrationDisabled(gettext("Registration for this domain needs an invitation."))


def awaits_approval(account: MailAccount) -> bool:
    """True while an administrator has yet to approve the account (it cannot log in)."""
    return account.status == AccountStatus.APPROVAL


def initial_status(domain: ProviderDomain, created_via: CreatedVia | str) -> AccountStatus:
    """The status of a new account once nothing is pending: active, or awaiting approval.

    A provider that requires approval holds back every account from the public front doors
    (RELIABILITY.md check 4); an administrator's own accounts are active at once.
    """
    if domain.provider.require_approval and created_via != CreatedVia.ADMIN:
        return AccountStatus.APPROVAL
    return AccountStatus.ACTIVE


_P = ParamSpec("_P")


def _registration_event(create: Callable[_P, MailAccount]) -> Callable[_P, MailAccount]:
    """One `registration` security event per call (portal/audit.py): created, or refused
    with its code. The actor is the address asked for; `admin` the administrator, if any."""

    @functools.wraps(create)
    def audited(*args: _P.args, **kwargs: _P.kwargs) -> MailAccount:
        domain = kwargs.get("domain")
        address = f"{kwargs.get('local_part', '')}@{getattr(domain, 'name', domain)}"
        context = {"via": str(kwargs.get("created_via", "")), "admin": current_admin()}
        try:
            account = create(*args, **kwargs)
        except PortalError as exc:
            security_event(
                "registration", outcome="refused", actor=address, reason=exc.code, **context
            )
            raise
        security_event(
            "registration",
            outcome="created",
            actor=account.address,
            status=account.status,
            onboarding=account.onboarding_token_id,
            **context,
        )
        return account

    return audited


@sensitive_variables()  # the password, here and in every frame below (docs/self-service.md)
@_registration_event
def create_account(
    *,
    domain: str | ProviderDomain,
    local_part: str,
    password: str,
    created_via: CreatedVia | str,
    full_name: str = "",
    third_pids: Sequence[tuple[str, str]] = (),
    status: AccountStatus | None = None,
    token_ok: bool = False,
    onboarding_token: OnboardingToken | None = None,
    expires_at: datetime | None = None,
) -> MailAccount:
    """Create a mail account and its mailbox, all or nothing.

    Inputs: a hosted domain (name or row), the typed local part and password, the front
    door it came through, optional third-party IDs as (kind, value). `token_ok` says the
    caller redeemed an onboarding token (needed where registration is "token"). `status`
    defaults to initial_status(); pass PENDING for an account awaiting email verification.
    `onboarding_token` is recorded on the row (committed with it: the token's uses and its
    accounts agree), `expires_at` ends a temporary account's lifetime
    (accounts.services.lifetime).
    Errors: `reg_disabled` (domain not hosted, closed, or token needed), `invalid_username`,
    `weak_password`, `invalid_email` / `invalid_msisdn`, `id_exists` (address or a
    third-party ID taken, also when a concurrent request won the race: the unique
    constraints decide), `mailbox_failed` (the backend refused: nothing is kept; or it did
    not answer in time: the row stays "creating" and the reconciler settles it),
    `database_unavailable`.
    Side effects, in this order so that a crash anywhere leaves a row saying what was under
    way (accounts.models.MailboxState): the MailAccount row (state "creating") and its
    ThirdPartyID rows are committed in one transaction, the mailbox backend creates the
    mailbox, then the row becomes "ready" and only then can it log in. Must not be called
    inside a transaction (the first commit must happen before the mail server is asked).
    """
    try:
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
    except _DB_DOWN as exc:
        raise _database_unavailable("account creation", exc) from None
    encoded = passwords.hash_password(password)  # slow: outside any transaction
    account = MailAccount(
        domain=row,
        local_part=normalised,
        password=encoded,
        full_name=full_name.strip(),
        status=status or initial_status(row, created_via),
        mailbox_state=MailboxState.CREATING,
        created_via=created_via,
        onboarding_token=onboarding_token,
        expires_at=expires_at,
    )
    try:
        _insert(account, pids)
        _provision(account, password)
    except _DB_DOWN as exc:
        raise _database_unavailable("account creation", exc) from None
    return account


def _insert(account: MailAccount, pids: Sequence[tuple[str, str]]) -> None:
    """Commit the "creating" row and its third-party IDs; AddressTaken if any is taken.

    A clash with a creation that was interrupted (a crash between the two commits) is
    settled here rather than answering `id_exists` until the reconciler runs: the client
    retrying its own registration gets it.
    """
    for attempt in range(2):
        try:
            with transaction.atomic(durable=True):
                account.save(force_insert=True)
                ThirdPartyID.objects.bulk_create(
                    ThirdPartyID(account=account, kind=kind, value=value) for kind, value in pids
                )
            return
        except IntegrityError:
            account.pk = None
            account._state.adding = True
            if attempt == 0 and _settle_interrupted_clashes(account, pids):
                continue
            raise AddressTaken() from None


def _settle_interrupted_clashes(account: MailAccount, pids: Sequence[tuple[str, str]]) -> bool:
    """Roll back interrupted creations holding this address or third-party IDs; any found?"""
    clash = models.Q(domain_id=account.domain_id, local_part=account.local_part)
    for kind, value in pids:
        clash |= models.Q(third_pids__kind=kind, third_pids__value=value)
    stale = list(
        MailAccount.objects.interrupted(MailboxState.CREATING)
        .filter(clash)
        .select_related("domain")
        .distinct()
    )
    return sum(roll_back_creation(account=row) for row in stale) > 0


def _provision(account: MailAccount, password: str) -> None:
    """Ask the backend for the mailbox, then mark the row ready (or undo the row)."""
    try:
        get_backend().create(mailbox_request(account, password))
    except MailboxError as exc:
        if not exc.outcome_unknown:
            # The backend changed nothing: the row goes, and with it the claim on the name.
            _forget(account)
        raise
    marked = MailAccount.objects.filter(pk=account.pk, mailbox_state=MailboxState.CREATING).update(
        mailbox_state=MailboxState.READY, updated_at=timezone.now()
    )
    if not marked:
        # The reconciler took it for interrupted (only after MAILBOX_RECONCILE_GRACE).
        raise MailboxError("The mailbox took too long to create; try again.")
    account.mailbox_state = MailboxState.READY


def _forget(account: MailAccount) -> None:
    """Delete a row whose mailbox was never made; if the database fails, the reconciler will."""
    try:
        MailAccount.objects.filter(pk=account.pk, mailbox_state=MailboxState.CREATING).delete()
    except _DB_DOWN as exc:
        logger.error("%s: left as 'creating' for the reconciler: %s", account.address, exc)


def roll_back_creation(*, account: MailAccount) -> bool:
    """Undo an interrupted creation: delete the mailbox (if it was made), then the row.

    Only for a row still "creating", which was never acknowledged to anyone (success is
    answered after the row is "ready"). The backend's contract makes the delete safe: its
    `create` refuses an address that exists, so a mailbox at this address was made for
    this row. Returns False if the row was gone or no longer "creating". Errors:
    `mailbox_failed` (the row stays for the next attempt).
    """
    get_backend().delete(account.address)
    deleted, _ = MailAccount.objects.filter(
        pk=account.pk, mailbox_state=MailboxState.CREATING
    ).delete()
    if deleted:
        logger.warning("interrupted creation of %s rolled back", account.address)
    return bool(deleted)


@sensitive_variables()  # the password (docs/self-service.md, "Error reports")
def set_password(
    *,
    account: MailAccount,
    password: str,
    check_policy: bool = True,
    keep_session: AccountSession | None = None,
) -> None:
    """Give the account a new password; the mail server sees it at once.

    Errors: `weak_password` (unless check_policy is off, for generated passwords),
    `mailbox_failed`. Side effects: the hash and password_changed_at are updated inside a
    transaction in which the backend changes the mailbox (which ends the open IMAP sessions
    where it can) and every self-service session of the account but `keep_session` ends.
    If the mail server refuses, nothing changes: neither the row, nor the sessions, nor
    `account` itself (it takes the new hash only once the change is made).
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
    encoded = passwords.hash_password(password)
    changed_at = timezone.now()
    with transaction.atomic():
        MailAccount.objects.filter(pk=account.pk).update(
            password=encoded, password_changed_at=changed_at, updated_at=changed_at
        )
        sessions.end_other_sessions(account=account, keep=keep_session)
        told = mailbox_request(account, password)
        get_backend().set_password(replace(told, password_hash=passwords.dovecot_form(encoded)))
    account.password, account.password_changed_at = encoded, changed_at
    logger.info("password changed: %s", account.address)


class WrongPassword(InvalidInput):
    code = "wrong_password"
    default_message = gettext_noop("The current password is wrong.")


@sensitive_variables()  # both passwords (docs/self-service.md, "Error reports")
def change_password(
    *, account: MailAccount, current_password: str, password: str, session: AccountSession
) -> None:
    """The owner's password change (SetPassword): the current password first (ASVS 6.2.3).

    The hasher runs once for the current password, then the policy and set_password. The
    account's row is locked meanwhile and the asking session must still be open, so of two
    changes at once (two browsers of the owner) the second finds its session ended by the
    first and is refused, instead of both succeeding and leaving no session and a password
    one of them does not know.
    Errors: `user:badAuth` (the session ended meanwhile), `wrong_password`, `weak_password`
    (also for the current password again), `mailbox_failed` (in words for the owner; the
    mail server's own are logged). Side effects: those of
    set_password; `session`, the one asking, stays open and every other one ends.
    """
    with transaction.atomic():
        locked = MailAccount.objects.select_for_update(of=("self",)).get(pk=account.pk)
        if not AccountSession.objects.filter(pk=session.pk).exists():
            raise sessions.BadAuth()
        if not passwords.verify_password(current_password, locked.password):
            raise WrongPassword(gettext(WrongPassword.default_message))
        if password == current_password:
            raise WeakPassword(gettext("The new password must differ from the current one."))
        try:
            set_password(account=account, password=password, keep_session=session)
        except MailboxError as exc:
            # The mail server's own words (a program's stderr) are the operator's, not
            # the owner's: logged here, and the owner told what it means for them.
            logger.warning("password change of %s refused: %s", account.address, exc.message)
            raise MailboxError(
                gettext(
                    "Your password was not changed: the mail server did not take the new "
                    "one. Try again shortly."
                ),
                outcome_unknown=exc.outcome_unknown,
            ) from None


FULL_NAME_MAX_LENGTH = 200


def change_full_name(*, account: MailAccount, full_name: str) -> None:
    """Save the name shown as the sender's display name (AccountSaveFullName).

    Surrounding white space is dropped; an empty name is allowed. Errors: `invalid_full_name`
    (longer than 200 characters, or control characters). The mail server is not told: the
    name is not part of what it reads (the dovecot_users view, the command's `create`).
    """
    name = full_name.strip()
    if len(name) > FULL_NAME_MAX_LENGTH:
        raise InvalidInput(
            gettext("Use at most %(count)d characters.") % {"count": FULL_NAME_MAX_LENGTH},
            code="invalid_full_name",
        )
    if any(unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"} for char in name):
        raise InvalidInput(
            gettext("The name cannot contain control or formatting characters."),
            code="invalid_full_name",
        )
    account.full_name = name
    account.save(update_fields=["full_name", "updated_at"])
    logger.info("full name changed: %s", account.address)


@dataclass(frozen=True)
class AccountSummary:
    """What the owner sees of the account (the Account call, the overview page).

    `storage_used` is None when the mail server cannot tell now; `storage_limit` is the
    mail server's limit, else the account's quota (0: no limit); both in bytes.
    """

    account: MailAccount
    storage_used: int | None
    storage_limit: int
    third_pids: tuple[ThirdPartyID, ...]


def account_summary(*, account: MailAccount) -> AccountSummary:
    """The account with its storage as the mail server counts it, and its third-party IDs."""
    usage = storage_usage(account)
    if usage is not None and usage.limit_bytes is not None:
        limit = usage.limit_bytes
    else:
        limit = account.effective_quota_mb * 1024 * 1024
    return AccountSummary(
        account=account,
        storage_used=usage.used_bytes if usage is not None else None,
        storage_limit=limit,
        third_pids=tuple(account.third_pids.order_by("kind", "value")),
    )


def storage_usage(account: MailAccount) -> Usage | None:
    """How much the account stores on the mail server, and its limit there.

    None when the mail server cannot tell now (not configured for it, unreachable): the
    failure is logged and the caller shows the number as unknown.
    """
    try:
        return get_backend().usage(account.address)
    except MailboxError as exc:
        logger.warning("storage usage of %s unknown: %s", account.address, exc.message)
        return None


def reset_password(*, account: MailAccount) -> str:
    """Give the account a new random password and return it (the only moment it exists)."""
    password = generate_password()
    set_password(account=account, password=password, check_policy=False)
    return password


def set_status(*, account: MailAccount, status: AccountStatus) -> bool:
    """Disable, enable or approve an account; False if it already had that status.

    Side effects: the row's status and, in the same transaction, the mailbox backend's
    enable or disable (only `active` accounts log in; any other status ends the open IMAP
    sessions where the backend can, and every self-service session).
    """
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
            # Its self-service sessions end with it (RELIABILITY.md check 15).
            sessions.end_other_sessions(account=account, keep=None)
            backend.disable(account.address)
    account.status = status
    logger.info("account %s: status %s", account.address, status)
    return True


def delete_account(*, account: MailAccount) -> None:
    """Delete the mailbox, then the account row.

    The row is first committed as "deleting" (it stops logging in at once), then the
    backend deletes the mailbox, then the row goes. Errors: `mailbox_failed`: the account
    is unchanged when the backend refused, or stays "deleting" for the reconciler to finish
    when its answer was lost. Called inside a transaction, the steps share it.
    """
    previous = account.mailbox_state
    MailAccount.objects.filter(pk=account.pk).update(
        mailbox_state=MailboxState.DELETING, updated_at=timezone.now()
    )
    try:
        get_backend().delete(account.address)
    except MailboxError as exc:
        if not exc.outcome_unknown:
            MailAccount.objects.filter(pk=account.pk).update(mailbox_state=previous)
        raise
    account.delete()
    logger.info("account deleted: %s", account.address)


def _database_unavailable(what: str, exc: Exception) -> DatabaseUnavailable:
    logger.error("%s: database unavailable: %s", what, type(exc).__name__)
    return DatabaseUnavailable()


def mailbox_request(account: MailAccount, password: str | None = None) -> MailboxRequest:
    """What the backend is told about `account` (the clear password only when just typed)."""
    return MailboxRequest(
        address=account.address,
        password_hash=passwords.dovecot_form(account.password),
        quota_mb=account.effective_quota_mb,
        full_name=account.full_name,
        enabled=account.status == AccountStatus.ACTIVE,
        password=password,
    )
