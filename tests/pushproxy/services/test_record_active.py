"""pushproxy.services.subscriptions.record_active: the monitor's write on every login."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from pushproxy.models import Status
from pushproxy.services import subscriptions

pytestmark = pytest.mark.django_db


def _row(make_subscription: Callable[..., Any], status: str, **extra: str) -> Any:
    return make_subscription(
        new_mail="https://push.example/new",
        reconnect="https://push.example/reconnect",
        status=status,
        mode="" if status == Status.PENDING else "idle",
        **extra,
    )


def _activate(sub: Any, **changes: str) -> str:
    fields = {
        "public_id": sub.public_id,
        "generation": sub.pk,
        "account_key": sub.account_key,
        "client_id": sub.client_id,
        "mode": "poll",
    }
    fields.update(changes)
    return subscriptions.record_active(**fields)  # type: ignore[arg-type]


def test_record_active_activates_the_login_and_replaces_the_older_ones_of_its_slot(
    make_subscription: Callable[..., Any],
) -> None:
    older = _row(make_subscription, Status.ACTIVE)
    older_pending = _row(make_subscription, Status.PENDING)
    other_client = _row(make_subscription, Status.ACTIVE, client_id="tablet")
    login = _row(make_subscription, Status.PENDING)

    assert _activate(login) == "active"

    login.refresh_from_db()
    assert (login.status, login.mode, login.error) == (Status.ACTIVE, "poll", "")
    assert login.activated_at is not None
    for replaced in (older, older_pending):
        replaced.refresh_from_db()
        assert (replaced.status, replaced.error) == (Status.REPLACED, "replaced")
        assert replaced.ended_at is not None
    other_client.refresh_from_db()
    assert other_client.status == Status.ACTIVE  # another slot of the same account


def test_record_active_of_a_row_no_longer_pending_is_gone_and_replaces_nothing(
    make_subscription: Callable[..., Any],
) -> None:
    older = _row(make_subscription, Status.ACTIVE)
    deleted = _row(make_subscription, Status.ENDED)

    assert _activate(deleted) == "gone"

    older.refresh_from_db()
    deleted.refresh_from_db()
    assert older.status == Status.ACTIVE  # the replacement was rolled back
    assert deleted.status == Status.ENDED


def test_record_active_names_the_row_and_its_slot_or_it_is_gone(
    make_subscription: Callable[..., Any],
) -> None:
    login = _row(make_subscription, Status.PENDING)

    assert _activate(login, client_id="someone-else") == "gone"
    assert _activate(login, public_id=uuid.uuid4().hex) == "gone"
    login.refresh_from_db()
    assert login.status == Status.PENDING


def test_record_active_behind_a_newer_active_login_is_superseded(
    make_subscription: Callable[..., Any],
) -> None:
    late = _row(make_subscription, Status.PENDING)
    newer = _row(make_subscription, Status.ACTIVE)

    assert _activate(late) == "superseded"

    late.refresh_from_db()
    newer.refresh_from_db()
    assert (late.status, late.error) == (Status.REPLACED, "superseded")
    assert newer.status == Status.ACTIVE
