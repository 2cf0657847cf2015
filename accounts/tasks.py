"""Celery tasks of the accounts app: periodic clean-up (registrations, sessions) and mailbox
reconciliation."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="accounts.purge_registrations")
def purge_registrations() -> dict[str, int]:
    """Hourly (CELERY_BEAT_SCHEDULE): see accounts.services.registration.purge_registrations."""
    # Imported here: services may enqueue tasks of this module (STYLE.md section 5, rule 5).
    from accounts.services.registration import purge_registrations as purge

    result = purge()
    return {"requests": result.requests, "accounts": result.accounts}


@shared_task(name="accounts.reconcile_mailboxes", acks_late=True)
def reconcile_mailboxes(
    fix_drift: bool = True, recreate_missing: bool = False, delete_orphans: bool = False
) -> dict[str, int]:
    """Every 5 minutes (CELERY_BEAT_SCHEDULE): accounts.services.reconcile.

    Late acknowledgement: a worker killed mid-pass leaves the message to be redelivered, and
    the pass is idempotent (it re-reads the mail server's list before each repair).
    """
    from accounts.services.reconcile import reconcile_mailboxes as reconcile

    report = reconcile(
        fix_drift=fix_drift, recreate_missing=recreate_missing, delete_orphans=delete_orphans
    )
    return {
        "rolled_back": len(report.rolled_back),
        "deletions_finished": len(report.deletions_finished),
        "orphan_mailboxes": len(report.orphan_mailboxes),
        "missing_mailboxes": len(report.missing_mailboxes),
        "status_drift": len(report.status_drift),
        "fixed": len(report.fixed),
        "errors": len(report.errors),
    }


@shared_task(name="accounts.purge_sessions")
def purge_sessions() -> int:
    """Hourly (CELERY_BEAT_SCHEDULE): see accounts.services.sessions.purge_sessions."""
    from accounts.services.sessions import purge_sessions as purge

    return purge()


@shared_task(name="accounts.end_expired_accounts", ignore_result=True)
def end_expired_accounts() -> dict[str, int]:
    """Every 5 minutes (CELERY_BEAT_SCHEDULE): accounts.services.lifetime."""
    from accounts.services.lifetime import end_expired_accounts as end

    report = end()
    return {"disabled": len(report.disabled), "deleted": len(report.deleted)}


# Acks late, so a worker lost mid-build leaves the task for another one (after the broker's
# visibility timeout; the sweep is quicker: accounts.sweep_sheets). The service claims the
# job with a conditional UPDATE: a second delivery of a finished job does nothing.
# Retried only when the database did not answer (the service put the job back in the
# queue): 30 s, 60 s, 120 s; the last try fails the job instead.
@shared_task(
    bind=True,
    name="accounts.build_sheet",
    acks_late=True,
    max_retries=3,
    soft_time_limit=1500,
    time_limit=1560,
)
def build_sheet(self: Any, job_id: int) -> str | None:
    """Build an onboarding sheet (accounts.services.sheets.build_sheet); its state or None."""
    from accounts.services import sheets

    try:
        job = sheets.build_sheet(job_id=job_id, last_try=self.request.retries >= self.max_retries)
    except sheets.TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=30 * 2**self.request.retries) from None
    return job.state if job is not None else None


@shared_task(name="accounts.sweep_sheets", ignore_result=True)
def sweep_sheets() -> dict[str, int]:
    """Every minute (CELERY_BEAT_SCHEDULE): restart or fail lost sheet jobs, purge old ones."""
    from accounts.services.sheets import sweep_sheets as sweep

    report = sweep()
    return {"requeued": len(report.requeued), "failed": len(report.failed), "purged": report.purged}
