"""The suggestion fan-out with a fault on the path to one remote provider.

tests/fakes/tcp_proxy.py sits between the portal (threads, or a real Celery worker on
Redis) and a well-behaved stub provider and drops, stalls, resets or delays the path: the
answer still comes before the deadline with that provider's status and everybody else's
suggestions, and once the path heals the provider answers again (no restart, nothing
remembered). Complements check 24, where the stub itself misbehaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from providers.models import Provider
from providers.services import fanout
from providers.services.suggest import NameQuery
from tests.fakes.tcp_proxy import FaultProxy

JULIET = NameQuery(first_name="Juliet", last_name="Capulet")
DEADLINE = 1.0 + 0.3  # make_remote_provider's time limit plus SUGGESTION_GRACE below
MARGIN = 0.7


@pytest.fixture(autouse=True)
def _no_cache(settings: Any) -> None:
    settings.SUGGESTION_CACHE_SECONDS = 0
    settings.SUGGESTION_GRACE = 0.3


@pytest.fixture
def faulty_path(
    fake_provider: Callable[..., Any], make_remote_provider: Callable[..., Provider]
) -> Iterator[FaultProxy]:
    stub = fake_provider(delay=0.05)
    parts = urlsplit(stub.url)
    proxy = FaultProxy(parts.port or 80)
    make_remote_provider(f"http://127.0.0.1:{proxy.port}{parts.path}", domain="path.example")
    yield proxy
    proxy.close()


@pytest.mark.parametrize(
    ("fault", "status"),
    [("drop", "timeout"), ("stall", "timeout"), ("reset", "error"), ("delay", "ok")],
)
def test_fanout_reports_a_faulty_path_and_answers_before_the_deadline_then_recovers(
    fanout_mode: str,
    faulty_path: FaultProxy,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
    fault: str,
    status: str,
) -> None:
    make_remote_provider(fake_provider(delay=0.05).url, domain="good.example")
    if fault == "delay":
        faulty_path.delay(0.2)  # slower, within the provider's 1 s
    else:
        getattr(faulty_path, fault)()

    started = time.monotonic()
    result = fanout.collect_suggestions(query=JULIET)
    elapsed = time.monotonic() - started

    assert elapsed < DEADLINE + MARGIN, elapsed
    statuses = {answer.provider: answer.status for answer in result.answers}
    assert statuses == {"path.example": status, "good.example": "ok", "hosted.example": "ok"}
    faulty_path.heal()
    faulty_path.cut()  # pooled keep-alive connections from the faulty time go
    healed = {a.provider: a.status for a in fanout.collect_suggestions(query=JULIET).answers}
    assert healed == {"path.example": "ok", "good.example": "ok", "hosted.example": "ok"}
