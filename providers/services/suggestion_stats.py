"""Hourly counters of each provider's suggestion queries: written cheaply, read by admin."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import QuerySet
from django.utils import timezone

from providers import provisioner
from providers.models import SuggestionStat, hour_of

logger = logging.getLogger(__name__)

_COLUMNS = (
    "provider_id",
    "hour",
    "queries",
    "succeeded",
    "timeouts",
    "errors",
    "addresses",
    "latency_ms_total",
    "latency_ms_max",
)


def record(
    answers: Sequence[tuple[int, provisioner.Answer]], *, at: datetime | None = None
) -> None:
    """Add one query per (provider pk, answer) to that provider's counters of this hour.

    One INSERT ... ON CONFLICT DO UPDATE for all of them (PostgreSQL and SQLite alike): the
    unique (provider, hour) constraint makes concurrent fan-outs add up instead of racing,
    and a fan-out costs one statement whatever the number of providers. Failing to count
    is logged, never raised: the suggestions matter more than their statistics.
    """
    if not answers:
        return
    hour = connection.ops.adapt_datetimefield_value(hour_of(at or timezone.now()))
    rows = []
    for provider_pk, answer in answers:
        rows.append(
            (
                provider_pk,
                hour,
                1,
                int(answer.status in (provisioner.OK, provisioner.DECLINED)),
                int(answer.status == provisioner.TIMEOUT),
                int(answer.status == provisioner.ERROR),
                len(answer.addresses),
                answer.latency_ms,
                answer.latency_ms,
            )
        )
    table = connection.ops.quote_name(SuggestionStat._meta.db_table)
    columns = ", ".join(_COLUMNS)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"] * len(rows))
    sums = ", ".join(
        f"{name} = {table}.{name} + EXCLUDED.{name}"
        for name in ("queries", "succeeded", "timeouts", "errors", "addresses", "latency_ms_total")
    )
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES {placeholders} "  # noqa: S608 (no user input)
        f"ON CONFLICT (provider_id, hour) DO UPDATE SET {sums}, latency_ms_max = CASE "
        f"WHEN EXCLUDED.latency_ms_max > {table}.latency_ms_max THEN EXCLUDED.latency_ms_max "
        f"ELSE {table}.latency_ms_max END"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, [value for row in rows for value in row])
    except DatabaseError as exc:
        logger.warning("suggestion statistics not recorded: %s", exc)


def since_last_day(now: datetime | None = None) -> datetime:
    """The first hour counted in "the last day": the current hour and the 23 before it."""
    return hour_of(now or timezone.now()) - timedelta(hours=23)


def purge(*, older_than_days: int | None = None, now: datetime | None = None) -> int:
    """Delete counters of hours older than SUGGESTION_STATS_DAYS; returns how many rows."""
    days = settings.SUGGESTION_STATS_DAYS if older_than_days is None else older_than_days
    cutoff = hour_of(now or timezone.now()) - timedelta(days=days)
    deleted, _ = stats_before(cutoff).delete()
    return deleted


def stats_before(cutoff: datetime) -> QuerySet[SuggestionStat]:
    return SuggestionStat.objects.filter(hour__lt=cutoff)
