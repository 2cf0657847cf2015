"""Celery tasks of providers, run eagerly: they call their service and return plain values."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.utils import timezone

from providers import tasks
from providers.models import Provider, SuggestionStat, hour_of


def test_query_provider_asks_the_provider_and_returns_a_json_answer(
    fake_provider: Callable[..., Any],
) -> None:
    fake = fake_provider()
    request = {
        "provider": "p.example",
        "url": fake.url,
        "params": {"first_name": "Juliet", "last_name": "Capulet"},
        "timeout": 2.0,
    }

    answer = tasks.query_provider.apply(args=(request,)).get()

    assert answer["provider"] == "p.example"
    assert answer["status"] == "ok"
    assert answer["addresses"] == [f"juliet.capulet@p{fake.server.server_address[1]}.example"]
    assert fake.hits[0].query["first_name"] == ["Juliet"]


def test_query_provider_returns_a_failure_instead_of_raising(free_port: int) -> None:
    request = {"provider": "p.example", "url": f"http://127.0.0.1:{free_port}/", "params": {}}

    answer = tasks.query_provider.apply(args=({**request, "timeout": 1.0},)).get()

    # No retry by design: the fan-out has answered by the time a retry could run.
    assert answer["status"] == "error"
    assert not getattr(tasks.query_provider, "autoretry_for", ())


def test_purge_suggestion_stats_deletes_only_old_hours(
    make_provider: Callable[..., Provider], settings: Any
) -> None:
    settings.SUGGESTION_STATS_DAYS = 30
    provider = make_provider()
    now = hour_of(timezone.now())
    SuggestionStat.objects.create(provider=provider, hour=now - timedelta(days=31), queries=1)
    kept = SuggestionStat.objects.create(provider=provider, hour=now - timedelta(days=29))

    assert tasks.purge_suggestion_stats.apply().get() == 1
    assert list(SuggestionStat.objects.values_list("pk", flat=True)) == [kept.pk]
