"""Email verification of new accounts: issue a code, mail it, confirm it, purge the abandoned."""

from __future__ import annotations

import logging
import secrets
import smtplib
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from accounts.models import (
    AccountStatus,
    MailAccount,
    MailboxState,
    ThirdPartyID,
    ThirdPartyKind,
    VerificationCode,
)
from accounts.services.accounts import (
    DatabaseUnavailable,
    delete_account,
    initial_status,
    set_status,
)
from accounts.services.names import normalise_local_part, normalise_third_pid
from portal.errors import InvalidInput, PortalError, ServiceUnavailable
from providers.domains import DomainError, to_ascii

logger = logging.getLogger(__name__)

CODE_DIGITS = 6
CODE_LIFETIME = timedelta(minutes=15)
MAX_ATTEMPTS = 5
_HMAC_SALT = "accounts.services.verification.code"


class VerificationFailed(InvalidInput):
    code = "verification_failed"
    default_message = "The code is wrong, or nothing is waiting for verification there."


class VerificationExpired(PortalError):
    code = "verification_expired"
    status = HTTPStatus.GONE  # this code can never succeed again
    default_message = (
        "The code has expired or was tried too often; the pending account is removed within "
        "the hour, then register again."
    )


class MailUnavailable(ServiceUnavailable):
    code = "mail_unavailable"
    default_message = "The verification mail could not be sent; try again shortly."


def code_hash(third_pid_id: int, code: str) -> str:
    """HMAC-SHA256 keyed from SECRET_KEY: a million possible codes must not be a table away."""
    return salted_hmac(_HMAC_SALT, f"{third_pid_id}:{code}", algorithm="sha256").hexdigest()


def issue_code(*, third_pid: ThirdPartyID, now: datetime | None = None) -> str:
    """A new random six-digit code for `third_pid`; only its hash is stored (replacing any)."""
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    now = now or timezone.now()
    VerificationCode.objects.update_or_create(
        third_pid=third_pid,
        defaults={
            "code_hash": code_hash(third_pid.pk, code),
            "expires_at": now + CODE_LIFETIME,
            "attempts": 0,
        },
    )
    return code


def render_email(name: str, context: dict[str, Any]) -> tuple[str, str, str]:
    """Subject, text body and HTML body of templates/emails/<name>-subject|body.txt|body.html."""
    subject = render_to_string(f"emails/{name}-subject.txt", context)
    text = render_to_string(f"emails/{name}-body.txt", context)
    html = render_to_string(f"emails/{name}-body.html", context)
    return " ".join(subject.split()), text, html


def send_code(*, account: MailAccount, to: str, code: str) -> None:
    """Mail `code` to `to`. Errors: `mail_unavailable` (the SMTP server refused or is down)."""
    provider = account.domain.provider
    subject, text, html = render_email(
        "verification",
        {
            "code": code,
            "address": account.address,
            "provider_name": provider.name,
            "minutes": int(CODE_LIFETIME.total_seconds() // 60),
        },
    )
    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, [to])
    message.attach_alternative(html, "text/html")
    try:
        message.send()
    except (smtplib.SMTPException, OSError) as exc:
        logger.error("verification mail for %s not sent: %s", account.address, type(exc).__name__)
        raise MailUnavailable() from None


def verify_registration(
    *, domain: str, user_id: str | None, email: str | None, code: str
) -> MailAccount:
    """Confirm a pending registration with the mailed code and activate the account.

    Inputs: the `to` domain, the userID registration answered or the email third-party ID,
    and the six-digit code. Errors: `verification_failed` (unknown, not pending, or wrong
    code: one answer for all), `verification_expired` (410), `database_unavailable`.
    Side effects: see confirm_code.
    """
    try:
        third_pid = find_pending(domain=domain, user_id=user_id, email=email)
        return confirm_code(third_pid=third_pid, code=code)
    except (OperationalError, InterfaceError) as exc:
        logger.error("verification: database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable() from None


def find_pending(*, domain: str, user_id: str | None, email: str | None) -> ThirdPartyID:
    """The email third-party ID awaiting verification, by userID or email, on `domain`.

    `user_id` is what registration answered: `@local@domain`, or the email third-party ID
    itself when no username was given. Errors: `verification_failed` when nothing matches
    (the same answer as a wrong code).
    """
    try:
        domain_name = to_ascii(domain)
    except DomainError:
        raise VerificationFailed() from None
    pids = ThirdPartyID.objects.select_related("account__domain__provider").filter(
        kind=ThirdPartyKind.EMAIL,
        account__domain__name=domain_name,
        account__status=AccountStatus.PENDING,
        verification__isnull=False,
    )
    if user_id is not None and user_id.startswith("@"):
        local, _at, user_domain = user_id[1:].rpartition("@")
        if not local or user_domain.lower() != domain_name:
            raise VerificationFailed()
        pids = pids.filter(account__local_part=normalise_local_part(local))
    else:
        try:
            value = normalise_third_pid("email", user_id if user_id is not None else email or "")
        except InvalidInput:
            raise VerificationFailed() from None
        pids = pids.filter(value=value)
    found = pids.first()
    if found is None:
        raise VerificationFailed()
    return found


def confirm_code(*, third_pid: ThirdPartyID, code: str, now: datetime | None = None) -> MailAccount:
    """Check `code` for `third_pid`; on success mark it verified and activate the account.

    Errors: `verification_failed` (wrong code), `verification_expired` (expired, or the
    MAX_ATTEMPTS tries are used up). Each try is counted by a conditional UPDATE committed
    before the comparison, so concurrent guesses cannot exceed the limit.
    Side effects: attempts + 1; on success the code row is deleted, verified_at set and the
    account activated (mailbox enabled) in one transaction, or, where the provider requires
    approval, handed on to "awaiting approval".
    """
    now = now or timezone.now()
    counted = VerificationCode.objects.filter(
        third_pid=third_pid, attempts__lt=MAX_ATTEMPTS, expires_at__gt=now
    ).update(attempts=F("attempts") + 1)
    if not counted:
        raise VerificationExpired()
    stored = VerificationCode.objects.filter(third_pid=third_pid).values_list(
        "code_hash", flat=True
    )
    expected = stored.first()
    if expected is None or not constant_time_compare(code_hash(third_pid.pk, code), expected):
        raise VerificationFailed()
    account = third_pid.account
    with transaction.atomic():
        deleted, _ = VerificationCode.objects.filter(third_pid=third_pid).delete()
        if deleted:
            ThirdPartyID.objects.filter(pk=third_pid.pk).update(verified_at=now)
            set_status(account=account, status=initial_status(account.domain, account.created_via))
    logger.info("email verified: %s", account.address)
    return account


def purge_abandoned(*, now: datetime | None = None) -> int:
    """Delete pending accounts whose code expired unconfirmed, so their address is free again.

    Pending accounts with no code at all are deleted too once a code's lifetime has passed
    since their creation: their code was never stored (a crash right after creation).
    Returns how many were deleted.
    """
    now = now or timezone.now()
    abandoned = list(
        MailAccount.objects.select_related("domain")
        .filter(status=AccountStatus.PENDING, mailbox_state=MailboxState.READY)
        .filter(
            Q(third_pids__verification__expires_at__lte=now)
            | Q(created_at__lte=now - CODE_LIFETIME, third_pids__verification__isnull=True)
        )
        .distinct()
    )
    # A pending account with a live code keeps it (the code is on another third-party ID).
    keep = set(
        VerificationCode.objects.filter(
            third_pid__account__in=abandoned, expires_at__gt=now
        ).values_list("third_pid__account_id", flat=True)
    )
    deleted = 0
    for account in abandoned:
        if account.pk not in keep:
            delete_account(account=account)
            deleted += 1
    return deleted
