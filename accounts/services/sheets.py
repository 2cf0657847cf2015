"""DCLOGIN codes of accounts and onboarding sheets of many: new passwords, one PDF, one download.

A password exists in clear only when it is set (accounts.services.accounts). So a DCLOGIN
code is made at that moment: when an administrator creates an account or resets its
password (`login_codes`, shown once in admin), or for a batch, by a sheet job that resets
the passwords of the chosen accounts and draws their codes (`start_sheet` -> Celery task
`accounts.build_sheet` -> `build_sheet`). The finished PDF is kept encrypted (Fernet, key
derived from SECRET_KEY) until its one download or for ONBOARDING_SHEET_LIFETIME, whichever
is first: the database never holds a clear password, and a dump of it holds a sheet only
while someone is about to download it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography.fernet import Fernet
from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from accounts import tasks
from accounts.models import MailAccount, SheetJob
from accounts.services.accounts import reset_password
from portal.errors import InvalidInput, NotFound, PortalError
from providers import qr, sheets
from providers.models import Provider

logger = logging.getLogger(__name__)

# A job whose worker stopped reporting for this long is taken for dead: a redelivered task
# may start it again (passwords are then reset once more, and the sheet has the new ones).
STALL_AFTER = 120.0
# Progress is written every this many accounts (one UPDATE each time).
PROGRESS_EVERY = 10
# The most accounts one sheet may hold (the batch is 1000).
MAX_ACCOUNTS = 5000


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
        logger.info("DCLOGIN code shown for %s to %s", account.address, shown_to or "-")
    return codes


def start_sheet(*, account_ids: Sequence[int], created_by: Any) -> SheetJob:
    """Queue a sheet of these accounts: their passwords will be reset and printed as codes.

    Errors: `invalid` (no accounts, or more than MAX_ACCOUNTS). Side effects: a SheetJob
    row; the task `accounts.build_sheet` is enqueued once it is committed.
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
        transaction.on_commit(lambda: tasks.build_sheet.delay(job.pk))
    logger.info("sheet %s queued: %d accounts", job.pk, len(ids))
    return job


def build_sheet(*, job_id: int) -> SheetJob | None:
    """Reset the job's accounts' passwords, draw their cards, keep the PDF encrypted.

    Claims the job with a conditional UPDATE (queued, or running but stalled, and not
    expired); None if there was nothing to claim (done, taken, gone). Accounts that have
    disappeared or whose password cannot be reset are counted as failed, with the reason
    in `problems`; the rest make the sheet. Side effects: every listed account gets a new
    password (the mail server follows; old sessions end), progress updates on the row.
    """
    now = timezone.now()
    stalled = now - timedelta(seconds=STALL_AFTER)
    claimed = (
        SheetJob.objects.filter(pk=job_id, expires_at__gt=now)
        .filter(
            models.Q(state=SheetJob.State.QUEUED)
            | models.Q(state=SheetJob.State.RUNNING, updated_at__lt=stalled)
        )
        .update(state=SheetJob.State.RUNNING, done=0, failed=0, problems="", updated_at=now)
    )
    if not claimed:
        return None
    job = SheetJob.objects.get(pk=job_id)
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
            qr.first_servers(server.as_autoconfig() for server in account.provider.servers.all())
            password = reset_password(account=account)
            cards.append(card_for(account, login_text(account, password), logos))
        except (PortalError, qr.QRFormatError) as exc:
            problems.append(f"{account.address}: {getattr(exc, 'message', exc)}")
        if found % PROGRESS_EVERY == 0:
            _progress(job, done=len(cards), failed=len(problems))
    missing = job.total - found
    failed = len(problems) + missing
    if missing:
        problems.append(f"{missing} account(s) no longer exist.")
    content = _fernet().encrypt(sheets.pdf(cards, title="Onboarding sheet"))
    SheetJob.objects.filter(pk=job.pk).update(
        state=SheetJob.State.DONE,
        content=content,
        done=len(cards),
        failed=failed,
        problems="\n".join(problems),
        updated_at=timezone.now(),
    )
    logger.info("sheet %s built: %d cards, %d failed", job.pk, len(cards), failed)
    job.refresh_from_db()
    return job


def _progress(job: SheetJob, *, done: int, failed: int) -> None:
    SheetJob.objects.filter(pk=job.pk, state=SheetJob.State.RUNNING).update(
        done=done, failed=failed, updated_at=timezone.now()
    )


def take_sheet(*, job_id: int, user: Any) -> bytes:
    """The finished PDF, for the administrator who asked for it, once: the row goes with it.

    Errors: `sheet_gone` (not theirs, not finished, downloaded already, or expired).
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
    return _fernet().decrypt(content)


def purge_sheets() -> int:
    """Delete sheets past their hour, finished or not; how many went."""
    deleted, _ = SheetJob.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"mailportal onboarding sheets\0" + settings.SECRET_KEY.encode())
    return Fernet(base64.urlsafe_b64encode(digest.digest()))
