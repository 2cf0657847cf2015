"""Hourly suggestion counters (providers.services.suggestion_stats)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from providers import provisioner
from providers.models import Provider, SuggestionStat
from providers.services import suggestion_stats

AT = datetime(2031, 5, 6, 7, 45, 12, tzinfo=UTC)


def ok(latency: int, addresses: int = 2) -> provisioner.Answer:
    return provisioner.hosted_answer(
        "p.example", [f"u{n}@p.example" for n in range(addresses)], 0, latency
    )


def test_record_adds_up_in_one_row_per_provider_and_hour(
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider()
    timeout = provisioner.failed("p.example", provisioner.TIMEOUT, latency_ms=3000)
    error = provisioner.failed("p.example", provisioner.ERROR, latency_ms=5)

    suggestion_stats.record([(provider.pk, ok(40))], at=AT)
    suggestion_stats.record([(provider.pk, timeout)], at=AT + timedelta(minutes=10))
    suggestion_stats.record([(provider.pk, error)], at=AT)
    suggestion_stats.record([(provider.pk, ok(60, 3))], at=AT + timedelta(hours=1))

    first, second = SuggestionStat.objects.order_by("hour")
    assert first.hour == datetime(2031, 5, 6, 7, tzinfo=UTC)
    assert (first.queries, first.succeeded, first.timeouts, first.errors) == (3, 1, 1, 1)
    assert (first.addresses, first.latency_ms_total, first.latency_ms_max) == (2, 3045, 3000)
    assert first.latency_ms_mean == 1015
    assert (second.queries, second.addresses, second.latency_ms_max) == (1, 3, 60)


def test_record_writes_all_providers_in_one_statement(
    make_provider: Callable[..., Provider], django_assert_num_queries: Any
) -> None:
    providers = [make_provider(domains=(f"p{n}.example",)) for n in range(4)]

    with django_assert_num_queries(1):
        suggestion_stats.record([(p.pk, ok(10)) for p in providers], at=AT)

    assert SuggestionStat.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_record_from_concurrent_fanouts_loses_no_count(
    make_provider: Callable[..., Provider],
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrency is checked on PostgreSQL (SQLite serialises writers)")
    provider = make_provider()
    start = threading.Barrier(10)

    def fan_out() -> None:
        start.wait()
        for _ in range(5):
            suggestion_stats.record([(provider.pk, ok(10))], at=AT)
        connection.close()

    threads = [threading.Thread(target=fan_out) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stat = SuggestionStat.objects.get()
    assert (stat.queries, stat.succeeded, stat.addresses) == (50, 50, 100)


def test_since_last_day_is_the_current_hour_and_the_23_before() -> None:
    assert suggestion_stats.since_last_day(AT) == datetime(2031, 5, 5, 8, tzinfo=UTC)


def test_with_suggestion_stats_sums_the_last_day_per_provider(
    make_provider: Callable[..., Provider],
) -> None:
    busy, idle = make_provider(), make_provider(domains=("idle.example",))
    suggestion_stats.record([(busy.pk, ok(30))], at=AT)
    suggestion_stats.record([(busy.pk, provisioner.failed("x", "timeout", latency_ms=90))], at=AT)
    suggestion_stats.record([(busy.pk, ok(10))], at=AT - timedelta(days=2))  # too old

    found = {
        p.pk: p for p in Provider.objects.with_suggestion_stats(suggestion_stats.since_last_day(AT))
    }

    assert (found[busy.pk].stat_queries, found[busy.pk].stat_timeouts) == (2, 1)
    assert (found[busy.pk].stat_latency_total, found[busy.pk].stat_latency_max) == (120, 90)
    assert found[idle.pk].stat_queries == 0
