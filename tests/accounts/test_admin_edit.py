"""An account's page writes only what it edits: a concurrent password change or status
change survives it.

The page loads the row, the administrator edits, the save writes. What another process
commits in between (a password reset, the lifetime pass disabling the account) must not be
undone by the save. The test makes that change at the last moment: a pre_save receiver
changes the row through the services just before the page's save runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import lxml.html
import pytest
from django.db.models.signals import pre_save
from django.test import Client

from accounts import passwords
from accounts.models import AccountStatus, MailAccount
from accounts.services.accounts import create_account, set_password, set_status
from providers.models import Provider

pytestmark = pytest.mark.django_db


def form_fields(html: bytes, form_id: str) -> dict[str, str]:
    """What a browser sends from the form `form_id` of an admin page, unchanged."""
    [form] = lxml.html.fromstring(html).xpath(f'//form[@id="{form_id}"]')
    values: dict[str, str] = {}
    for name, value in form.form_values():
        values.setdefault(name, value)
    return values


@contextmanager
def just_before_saving(model: type[Any], change: Callable[[Any], None]) -> Iterator[None]:
    """Run `change(instance)` once, right before the next save of a `model` row."""
    uid = f"concurrent-{model.__name__}"

    def receiver(sender: type[Any], instance: Any, **kwargs: Any) -> None:
        pre_save.disconnect(sender=model, dispatch_uid=uid)
        change(instance)

    pre_save.connect(receiver, sender=model, weak=False, dispatch_uid=uid)
    try:
        yield
    finally:
        pre_save.disconnect(sender=model, dispatch_uid=uid)


def test_editing_an_account_keeps_a_password_and_status_changed_meanwhile(
    admin_client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider()
    account = create_account(
        domain="example.org", local_part="anna", password="Anna-first-pw-1", created_via="admin"
    )
    url = f"/admin/accounts/mailaccount/{account.pk}/change/"
    values = form_fields(admin_client.get(url).content, "mailaccount_form")
    values.update(full_name="Anna Bell", quota_mb="2048")

    def meanwhile(loaded: MailAccount) -> None:
        fresh = MailAccount.objects.select_related("domain__provider").get(pk=loaded.pk)
        set_password(account=fresh, password="Anna-second-pw-2", check_policy=False)
        set_status(account=fresh, status=AccountStatus.DISABLED)

    with just_before_saving(MailAccount, meanwhile):
        response = admin_client.post(url, values)

    assert response.status_code == HTTPStatus.FOUND, response.content.decode()[:2000]
    account.refresh_from_db()
    assert (account.full_name, account.quota_mb) == ("Anna Bell", 2048)  # the page's edit
    assert account.status == AccountStatus.DISABLED  # and what happened meanwhile
    assert passwords.verify_password("Anna-second-pw-2", account.password)


def test_an_account_page_saved_unchanged_writes_nothing(
    admin_client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider()
    account = create_account(
        domain="example.org", local_part="bert", password="Bert-first-pw-1", created_via="admin"
    )
    url = f"/admin/accounts/mailaccount/{account.pk}/change/"
    values = form_fields(admin_client.get(url).content, "mailaccount_form")
    MailAccount.objects.filter(pk=account.pk).update(status=AccountStatus.DISABLED)

    def meanwhile(loaded: MailAccount) -> None:
        raise AssertionError("an unchanged page saved the row")

    with just_before_saving(MailAccount, meanwhile):
        response = admin_client.post(url, values)

    assert response.status_code == HTTPStatus.FOUND
    assert MailAccount.objects.get(pk=account.pk).status == AccountStatus.DISABLED
