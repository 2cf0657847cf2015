"""Celery tasks of providers: ask one remote provider for suggestions; purge old counters."""

from __future__ import annotations

from typing import Any

from celery import shared_task


# No automatic retry: the fan-out waits for this answer until its deadline only, and a
# retry would arrive after it. A timeout or error is the answer (query_remote never raises
# for what the provider does). acks_late off: redelivering a fan-out query after a worker
# crash would ask the provider again for an answer nobody is waiting for.
@shared_task(name="providers.query_provider", acks_late=False, ignore_result=False)
def query_provider(request: dict[str, Any]) -> dict[str, Any]:
    """Ask the provider described by `request` (fanout.RemoteRequest.as_json())."""
    from providers.services import fanout  # the service imports this module to enqueue

    return fanout.query_remote(fanout.RemoteRequest.from_json(request)).as_json()


@shared_task(name="providers.purge_suggestion_stats", ignore_result=True)
def purge_suggestion_stats() -> int:
    """Delete hourly suggestion counters older than SUGGESTION_STATS_DAYS (daily, beat)."""
    from providers.services import suggestion_stats  # services import tasks; keep one way

    return suggestion_stats.purge()
