"""Celery tasks of the accounts app: periodic clean-up of in-band registration state."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="accounts.purge_registrations")
def purge_registrations() -> dict[str, int]:
    """Hourly (CELERY_BEAT_SCHEDULE): see accounts.services.registration.purge_registrations."""
    # Imported here: services may enqueue tasks of this module (STYLE.md section 5, rule 5).
    from accounts.services.registration import purge_registrations as purge

    result = purge()
    return {"requests": result.requests, "accounts": result.accounts}
