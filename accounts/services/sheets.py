"""DCLOGIN codes of accounts and onboarding sheets of many: new passwords, one PDF, one download.

A password exists in clear only when it is set (accounts.services.accounts). So a DCLOGIN
code is made at that moment: when an administrator creates an account or resets its
password (`login_codes`, shown once in admin), or for a batch, by a sheet job that resets
the passwords of the chosen accounts and draws their codes (`start_sheet` -> Celery task
`accounts.build_sheet` -> `build_sheet`; `sweep_sheets` restarts or fails jobs whose run
was lost). The finished PDF is kept encrypted (Fernet, key derived from SECRET_KEY) until
its one download or for ONBOARDING_SHEET_LIFETIME, whichever is first: the database never
holds a clear password, and a dump of it holds a sheet only while someone is about to
download it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import InterfaceError, OperationalError, models, transaction
from django.utils import timezone
from django.utils.encoding import force_bytes

from accounts import tasks
from accounts.models import MailAccount, SheetJob
from accounts.services.accounts import reset_password
from portal.audit import security_event
from portal.errors import InvalidInput, NotFound, PortalError
from providers import qr, sheets
from providers.models import Provider

logger = logging.getLogger(__name__)

# A running job without progress for this long is taken for dead (progress is written
# after each account, a few per second): the sweep queues it again and a new run claims it
# (passwords are then reset once more, and the sheet has the new ones).
STALL_AFTER = timedelta(minutes=2)
# Runs one job gets at most: a sheet whose worker keeps dying is failed, not retried forever.
MAX_STARTS = 3
# The database not answering: the task retries (the job goes back to the queue).
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
# The most accounts one sheet may hold (the batch is 1000).
MAX_ACCOUNTS = 5000

# What the administrator reads on the sheet's page when it could not be made.
PASSWORDS_LOST = (
    "Passwords reset before it stopped are on no sheet: those accounts need a new sheet (or "
    "a password reset) to be usable."
)
NOT_STARTED = (
    "The sheet could not be started: the task queue (Redis) is not reachable. No password "
    "was changed; try again in a moment."
)
EXPIRED = f"The sheet was not finished within its hour. {PASSWORDS_LOST}"


class SheetUnreadable(PortalError):
    code = "sheet_unreadable"
    status = HTTPStatus.GONE
    default_message = (
        "This sheet can no longer be read: the portal's secret key changed since it was "
        "made. Build it again (the accounts get new passwords)."
    )


class SheetGone(NotFound):
    code = "sheet_gone"
    default_message = (
        "This sheet was downloaded already or has expired: sheets hold passwords and are "
        "kept for one download within an hour. Make a new one."
    )


@dataclass(frozen=True)
class LoginCode:
    """A DCLOGIN code of one account, ready for the page that shows it once."""

    account: MailAccount
    code: sheets.Printable
    card: sheets.Card


def login_text(account: MailAccount, password: str) -> str:
    """The account's DCLOGIN text with its provider's first IMAP and SMTP servers.

    Raises qr.QRFormatError (a ValueError) if the provider has no IMAP or SMTP server.
    Expects `account.domain.provider` with its servers (prefetch them in loops).
    """
    provider = account.domain.provider
    imap, smtp = qr.first_servers(server.as_autoconfig() for server in provider.servers.all())
    return qr.dclogin_text(address=account.address, password=password, imap=imap, smtp=smtp)


def card_for(account: MailAccount, text: str, logos: dict[int, bytes | None]) -> sheets.Card:
    """One sheet card: the code `text`, the address, the provider, its instructions and logo.

    `logos` caches each provider's printable logo (one query per provider, not per card).
    """
    provider = account.domain.provider
    if provider.pk not in logos:
        data, content_type = Provider.objects.filter(pk=provider.pk).values_list(
            "logo", "logo_type"
        )[0]
        logos[provider.pk] = sheets.print_logo(bytes(data), content_type)
    return sheets.Card(
        qr_text=text,
        title=account.address,
        provider_name=provider.name,
        instructions=sheets.instructions_for(provider.language_list),
        logo_png=logos[provider.pk],
    )


def login_codes(
    rows: Sequence[tuple[MailAccount, str]], *, shown_to: Any = None
) -> list[LoginCode]:
    """DCLOGIN codes for accounts whose passwords were just set (admin's shown-once page).

    Accounts whose provider DCLOGIN cannot describe (no IMAP server) are left out. Each
    code shown is logged as an audit event (who, which address; never the code).
    """
    codes = []
    logos: dict[int, bytes | None] = {}
    for account, password in rows:
        try:
            text = login_text(account, password)
        except qr.QRFormatError as exc:
            logger.info("no DCLOGIN code for %s: %s", account.address, exc)
            continue
        codes.append(
            LoginCode(
                account=account, code=sheets.printable(text), card=card_for(account, text, logos)
            )
        )
        audit_login_code(account, shown_to, via="admin page")
    return codes


def audit_login_code(account: MailAccount, user: Any, *, via: str) -> None:
    """Record that a DCLOGIN code was made for `account` by `user` (RELIABILITY.md check 28).

    One `dclogin.generated` security event, and an entry in the account's admin history
    ("History" on its admin page) naming the administrator and the time. Never the code or
    the password. Every code is made with a password set just before (reset_password or a
    new account), so the password it carries is the account's newest: making a code is
    itself the rotation; the previous password stopped working.
    """
    username = user.get_username() if user is not None else ""
    security_event(
        "dclogin.generated", outcome="generated", actor=username, account=account.address, via=via
    )
    if user is None:
        return
    entry = LogEntry(
        user=user,
        content_type=ContentType.objects.get_for_model(MailAccount),
        object_id=str(account.pk),
        object_repr=str(account)[:200],
        action_flag=CHANGE,
        change_message=f"DCLOGIN code generated ({via}); the password was set anew for it.",
    )
    entry.security_logged = True  # type: ignore[attr-defined]  # portal.audit: one event
    entry.save()


def start_sheet(*, account_ids: Sequence[int], created_by: Any) -> SheetJob:
    """Queue a sheet of these accounts: their passwords will be reset and printed as codes.

    Errors: `invalid` (no accounts, or more than MAX_ACCOUNTS). Side effects: a SheetJob
    row; the task `accounts.build_sheet` is enqueued once it is committed. If the broker
    cannot be reached, the job is failed at once with the reason (no password was changed).
    """
    ids = sorted(set(account_ids))
    if not ids:
        raise InvalidInput("Choose at least one account.")
    if len(ids) > MAX_ACCOUNTS:
        raise InvalidInput(f"A sheet holds at most {MAX_ACCOUNTS} accounts.")
    with transaction.atomic():
        job = SheetJob.objects.create(
            created_by=created_by,
            account_ids=ids,
            total=len(ids),
            expires_at=timezone.now() + settings.ONBOARDING_SHEET_LIFETIME,
        )
        transaction.on_commit(functools.partial(_enqueue, job.pk))
    logger.info("sheet %s queued: %d accounts", job.pk, len(ids))
    return job


def _enqueue(job_id: int) -> None:
    """Send the job's task; a broker that cannot be reached fails the (still queued) job."""
    try:
        tasks.build_sheet.delay(job_id)
    except Exception as exc:  # the broker's own errors (kombu, redis-py), or in eager mode
        # (no Redis) the build's: either way the job must not wait for a task never sent.
        logger.error("sheet %s: not started: %s", job_id, type(exc).__name__)
        SheetJob.objects.filter(pk=job_id, state=SheetJob.State.QUEUED).update(
            state=SheetJob.State.FAILED, problems=NOT_STARTED, updated_at=timezone.now()
        )


class LostClaim(Exception):
    """Another run took the job over (or the sweep failed it): this run stops."""


def build_sheet(*, job_id: int, last_try: bool = True) -> SheetJob | None:
    """Reset the job's accounts' passwords, draw their cards, keep the PDF encrypted.

    Claims the job with a conditional UPDATE (queued, or running but stalled, and not
    expired) that gives it a new attempt id; None if there was nothing to claim (done,
    taken, gone). Every later write of this run is conditional on that id, and each
    account's password is reset in one transaction with the job's heartbeat (which locks
    the job row): a run whose job was taken over stops before its next account and writes
    no sheet (None), and the sheet that is written has the passwords the accounts have.
    Accounts that have disappeared or whose password cannot be reset are counted as failed,
    with the reason in `problems`; the rest make the sheet.

    Errors: a database error (TRANSIENT_ERRORS) puts the job back in the queue and is
    raised, for the task to retry; on the `last_try` it fails the job instead. Any other
    error (a bug, SoftTimeLimitExceeded) fails the job, with a message for the
    administrator. Side effects: every listed account gets a new password (the mail server
    follows; old sessions end), progress updates on the row.
    """
    attempt = _claim(job_id)
    if attempt is None:
        return None
    try:
        _build(job_id, attempt)
    except LostClaim:
        logger.warning("sheet %s: taken over by another run; this one stopped", job_id)
        return None
    except TRANSIENT_ERRORS as exc:
        if not last_try:
            _release(job_id, attempt)
            raise
        _fail(job_id, attempt, f"The database failed ({type(exc).__name__}).")
    except Exception as exc:  # the job must not stay "running" with its passwords reset
        logger.exception("sheet %s: failed", job_id)
        _fail(job_id, attempt, f"An unexpected error stopped it ({type(exc).__name__}).")
    return SheetJob.objects.defer("content").filter(pk=job_id).first()


def _claim(job_id: int) -> uuid.UUID | None:
    now = timezone.now()
    attempt = uuid.uuid4()
    claimed = (
        SheetJob.objects.filter(pk=job_id, expires_at__gt=now)
        .filter(
            models.Q(state=SheetJob.State.QUEUED)
            | models.Q(state=SheetJob.State.RUNNING, updated_at__lt=now - STALL_AFTER)
        )
        .update(
            state=SheetJob.State.RUNNING,
            attempt=attempt,
            starts=models.F("starts") + 1,
            done=0,
            failed=0,
            problems="",
            updated_at=now,
        )
    )
    return attempt if claimed else None


def _build(job_id: int, attempt: uuid.UUID) -> None:
    job = SheetJob.objects.defer("content").get(pk=job_id)
    accounts = (
        MailAccount.objects.filter(pk__in=job.account_ids)
        .select_related("domain__provider")
        .prefetch_related("domain__provider__servers")
        .order_by("domain__name", "local_part")
    )
    problems: list[str] = []
    cards: list[sheets.Card] = []
    logos: dict[int, bytes | None] = {}
    found = 0
    for account in accounts:
        found += 1
        try:
            with transaction.atomic():
                # Holds the job row until the new password is committed: a takeover (the
                # claim's UPDATE of the same row) waits, and finds the job not stalled.
                _heartbeat(job_id, attempt, done=len(cards), failed=len(problems))
                servers = (server.as_autoconfig() for server in account.provider.servers.all())
                qr.first_servers(servers)
                password = reset_password(account=account)
            cards.append(card_for(account, login_text(account, password), logos))
            audit_login_code(account, job.created_by, via=f"sheet {job_id}")
        except (PortalError, qr.QRFormatError) as exc:
            problems.append(f"{account.address}: {getattr(exc, 'message', exc)}")
            _heartbeat(job_id, attempt, done=len(cards), failed=len(problems))
    missing = job.total - found
    failed = len(problems) + missing
    if missing:
        problems.append(f"{missing} account(s) no longer exist.")
    content = _fernet().encrypt(sheets.pdf(cards, title="Onboarding sheet"))
    finished = SheetJob.objects.filter(
        pk=job_id, attempt=attempt, state=SheetJob.State.RUNNING
    ).update(
        state=SheetJob.State.DONE,
        content=content,
        done=len(cards),
        failed=failed,
        problems="\n".join(problems),
        updated_at=timezone.now(),
    )
    if not finished:
        raise LostClaim()
    logger.info("sheet %s built: %d cards, %d failed", job_id, len(cards), failed)


def _heartbeat(job_id: int, attempt: uuid.UUID, *, done: int, failed: int) -> None:
    """Progress, and proof that this run still holds the job; LostClaim if it does not."""
    alive = SheetJob.objects.filter(
        pk=job_id, attempt=attempt, state=SheetJob.State.RUNNING
    ).update(done=done, failed=failed, updated_at=timezone.now())
    if not alive:
        raise LostClaim()


def _release(job_id: int, attempt: uuid.UUID) -> None:
    """Back to the queue for the task's retry; best effort (the database may be down: then
    the sweep finds the job stalled)."""
    try:
        SheetJob.objects.filter(pk=job_id, attempt=attempt, state=SheetJob.State.RUNNING).update(
            state=SheetJob.State.QUEUED, attempt=None, updated_at=timezone.now()
        )
    except TRANSIENT_ERRORS:
        logger.warning("sheet %s: left running for the sweep", job_id)


def _fail(job_id: int, attempt: uuid.UUID, reason: str) -> None:
    SheetJob.objects.filter(pk=job_id, attempt=attempt, state=SheetJob.State.RUNNING).update(
        state=SheetJob.State.FAILED,
        attempt=None,
        problems=f"{reason} {PASSWORDS_LOST}",
        updated_at=timezone.now(),
    )


@dataclass(frozen=True)
class SweepReport:
    requeued: list[int]
    failed: list[int]
    purged: int


def sweep_sheets(*, at: datetime | None = None) -> SweepReport:
    """Take care of jobs no run is working on; delete finished ones past their hour.

    Every minute (CELERY_BEAT_SCHEDULE, task `accounts.sweep_sheets`; `manage.py
    sweep_sheets`). A running job without progress for STALL_AFTER seconds (its worker was
    lost: a redelivery would only come after the broker's visibility timeout, when the
    sheet has expired) is queued again and its task sent, up to MAX_STARTS runs; then it is
    failed. A job still queued or running when its hour is over is failed. Jobs being
    worked on right now are locked by their run and skipped. Side effects: those state
    changes, tasks enqueued after commit, and purge_sheets.
    """
    now = at or timezone.now()
    unfinished = [SheetJob.State.QUEUED, SheetJob.State.RUNNING]
    expired = list(
        SheetJob.objects.filter(state__in=unfinished, expires_at__lte=now).values_list(
            "pk", flat=True
        )
    )
    SheetJob.objects.filter(pk__in=expired, state__in=unfinished).update(
        state=SheetJob.State.FAILED, attempt=None, problems=EXPIRED, updated_at=now
    )
    with transaction.atomic():
        stalled = list(
            SheetJob.objects.select_for_update(skip_locked=True)
            .filter(
                state=SheetJob.State.RUNNING,
                updated_at__lt=now - STALL_AFTER,
                expires_at__gt=now,
            )
            .values_list("pk", "starts")
        )
        requeue = [pk for pk, starts in stalled if starts < MAX_STARTS]
        give_up = [pk for pk, starts in stalled if starts >= MAX_STARTS]
        SheetJob.objects.filter(pk__in=requeue).update(
            state=SheetJob.State.QUEUED, attempt=None, updated_at=now
        )
        SheetJob.objects.filter(pk__in=give_up).update(
            state=SheetJob.State.FAILED,
            attempt=None,
            problems=f"Its worker stopped {MAX_STARTS} times. {PASSWORDS_LOST}",
            updated_at=now,
        )
        for pk in requeue:
            transaction.on_commit(functools.partial(_enqueue, pk))
    if requeue or give_up or expired:
        logger.warning(
            "sheets: %d queued again, %d failed (stalled), %d failed (expired)",
            len(requeue),
            len(give_up),
            len(expired),
        )
    return SweepReport(requeued=requeue, failed=give_up + expired, purged=purge_sheets(at=now))


def take_sheet(*, job_id: int, user: Any) -> bytes:
    """The finished PDF, for the administrator who asked for it, once: the row goes with it.

    Errors: `sheet_gone` (not theirs, not finished, downloaded already, or expired),
    `sheet_unreadable` (encrypted under a SECRET_KEY that is neither the current one nor in
    SECRET_KEY_FALLBACKS; the row is gone too).
    """
    with transaction.atomic():
        job = (
            SheetJob.objects.select_for_update()
            .filter(
                pk=job_id,
                created_by=user,
                state=SheetJob.State.DONE,
                expires_at__gt=timezone.now(),
            )
            .first()
        )
        if job is None or job.content is None:
            raise SheetGone()
        content = bytes(job.content)
        job.delete()
    logger.info("sheet %s downloaded and deleted", job_id)
    try:
        return _fernet().decrypt(content)
    except InvalidToken:
        logger.warning("sheet %s: not readable with the current secret keys", job_id)
        raise SheetUnreadable() from None


def purge_sheets(*, at: datetime | None = None) -> int:
    """Delete finished and failed sheets past their hour; how many went.

    Queued and running ones are the sweep's (sweep_sheets fails them first), so a run is
    never left writing to a row that is gone.
    """
    deleted, _ = SheetJob.objects.filter(
        state__in=[SheetJob.State.DONE, SheetJob.State.FAILED],
        expires_at__lte=at or timezone.now(),
    ).delete()
    return deleted


def _fernet() -> MultiFernet:
    """The sheets' key, derived from SECRET_KEY; older keys of SECRET_KEY_FALLBACKS decrypt
    sheets made before a rotation."""
    secrets = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    return MultiFernet([Fernet(_key(secret)) for secret in secrets])


def _key(secret: str | bytes) -> bytes:
    digest = hashlib.sha256(b"mailportal onboarding sheets\0" + force_bytes(secret))
    return base64.urlsafe_b64encode(digest.digest())
