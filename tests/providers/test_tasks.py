"""Celery tasks of providers, run eagerly (they call their service and return plain values)
and, for what only a worker does, by the real worker of fixture celery_worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.utils import timezone

from providers import tasks
from providers.models import Provider, SuggestionStat, hour_of


def request_to(fake: Any, first_name: str, last_name: str) -> dict[str, Any]:
    """query_provider's argument for asking `fake` about this name."""
    params = {"first_name": first_name, "last_name": last_name}
    return {"provider": "p.example", "url": fake.url, "params": params, "timeout": 2.0}


def test_query_provider_asks_the_provider_and_returns_a_json_answer(
    fake_provider: Callable[..., Any],
) -> None:
    fake = fake_provider()

    answer = tasks.query_provider.apply(args=(request_to(fake, "Juliet", "Capulet"),)).get()

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


def test_query_provider_success_is_not_logged_with_its_result(
    celery_worker: Any, fake_provider: Callable[..., Any]
) -> None:
    # The worker runs at log level INFO, as deploy/Procfile runs it. There Celery logs
    # each task's return value on success: suggested addresses, made from people's names.
    fake = fake_provider()
    result = tasks.query_provider.apply_async((request_to(fake, "Rosaline", "Verona"),))
    try:
        answer = result.get(timeout=10)
    finally:
        result.forget()
    time.sleep(0.2)  # the worker logs after it has stored the result

    log = celery_worker.log.read_text(errors="replace")
    assert answer["addresses"] == [f"rosaline.verona@p{fake.server.server_address[1]}.example"]
    assert f"[{result.id}] received" in log  # INFO lines are written
    assert result.id not in log.replace(f"[{result.id}] received", "")
    assert "rosaline" not in log.lower()


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
