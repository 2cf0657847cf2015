"""The admin site (portal/adminsite.py): RELIABILITY.md check 28, the admin half.

Its login is limited like the self-service login (failures per address and per name, 429
with Retry-After, fail closed), it is reachable only from PORTAL_ADMIN_NETWORKS when set,
every admin action is a security event, and a DCLOGIN code is audited: who made it for
which account, when, as a security event and in the account's admin history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client

from accounts.models import MailAccount
from accounts.services.accounts import create_account
from portal.adminsite import admin_allowed
from providers.models import Provider

PASSWORD = "Admin-canary-pw-31337"
LOGIN = "/admin/login/"


@pytest.fixture
def security_events(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[str], list[Any]]]:
    caplog.set_level(logging.INFO, logger="portal.security")

    def named(event: str) -> list[Any]:
        records = [
            json.loads(r.getMessage()) for r in caplog.records if r.name == "portal.security"
        ]
        return [record for record in records if record["event"] == event]

    yield named


@pytest.fixture
def administrator(db: None) -> User:
    cache.clear()  # failure counters of earlier tests (Redis under CI)
    return User.objects.create_superuser("root", "root@example.org", PASSWORD)


def log_in(address: str, password: str, username: str = "root") -> Any:
    client = Client(REMOTE_ADDR=address)
    response = client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})
    response.client = client
    return response


def test_admin_login_is_refused_with_429_after_ten_failures_and_checks_no_password(
    administrator: User, security_events: Callable[[str], list[Any]]
) -> None:
    for _ in range(10):
        failed = log_in("192.0.2.20", "wrong")
        assert failed.status_code == HTTPStatus.OK  # the form again, with its error

    refused = log_in("192.0.2.20", PASSWORD)  # the right password, too late

    assert refused.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert 0 < int(refused["Retry-After"]) <= 60 + 10  # a minute and at most a slice
    assert "_auth_user_id" not in refused.client.session
    assert log_in("192.0.2.21", PASSWORD).status_code == HTTPStatus.FOUND  # another address
    failures = [e for e in security_events("admin.login") if e["outcome"] == "failure"]
    assert len(failures) == 10  # the refused attempt checked no password
    assert {e["ip"] for e in failures} == {"192.0.2.20"} and failures[0]["actor"] == "root"
    (limited,) = security_events("rate_limit")
    assert limited["limit"] == "admin.login.ip" and limited["ip"] == "192.0.2.20"
    (success,) = [e for e in security_events("admin.login") if e["outcome"] == "success"]
    assert success["ip"] == "192.0.2.21"


def test_admin_login_limits_one_name_across_addresses(administrator: User, settings: Any) -> None:
    settings.ADMIN_LOGIN_FAILURES_PER_ACCOUNT_RATE = "3/h"
    for number in range(3):
        assert log_in(f"192.0.2.{30 + number}", "wrong").status_code == HTTPStatus.OK

    assert log_in("192.0.2.40", PASSWORD).status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert log_in("192.0.2.40", "x", username="other").status_code == HTTPStatus.OK


def test_a_successful_admin_login_forgives_its_addresss_failures(administrator: User) -> None:
    for _ in range(9):
        log_in("192.0.2.50", "wrong")
    assert log_in("192.0.2.50", PASSWORD).status_code == HTTPStatus.FOUND

    for _ in range(10):
        assert log_in("192.0.2.50", "wrong").status_code == HTTPStatus.OK


def test_self_service_logins_forgive_no_admin_failures(
    administrator: User, make_provider: Callable[..., Provider]
) -> None:
    from tests.accounts import self_service

    make_provider()
    create_account(
        domain="example.org", local_part="eve", password=self_service.PASSWORD, created_via="api"
    )
    for _ in range(10):
        log_in("192.0.2.60", "wrong")
    mail_client = Client(REMOTE_ADDR="192.0.2.60")
    assert self_service.api_login(mail_client, "eve@example.org").status_code == HTTPStatus.OK

    assert log_in("192.0.2.60", PASSWORD).status_code == HTTPStatus.TOO_MANY_REQUESTS


def test_admin_login_fails_closed_with_503_when_the_cache_is_down(
    administrator: User, cache_down: None
) -> None:
    answer = log_in("192.0.2.70", PASSWORD)

    assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert int(answer["Retry-After"]) > 0
    assert "_auth_user_id" not in answer.client.session


def test_the_login_page_itself_is_not_limited(administrator: User) -> None:
    for _ in range(30):
        assert Client(REMOTE_ADDR="192.0.2.80").get(LOGIN).status_code == HTTPStatus.OK


# ----- reachable from the admin networks only ------------------------------------------------


@pytest.mark.parametrize(
    ("networks", "address", "allowed"),
    [
        ([], "203.0.113.9", True),
        (["192.0.2.0/24"], "192.0.2.9", True),
        (["192.0.2.0/24"], "192.0.3.9", False),
        (["192.0.2.0/24"], "::ffff:192.0.2.9", True),
        (["2001:db8::/32"], "2001:db8::1", True),
        (["2001:db8::/32"], "not an address", False),
    ],
)
def test_admin_allowed_admits_the_configured_networks(
    settings: Any, networks: list[str], address: str, allowed: bool
) -> None:
    import ipaddress

    settings.PORTAL_ADMIN_NETWORKS = [ipaddress.ip_network(n) for n in networks]

    assert admin_allowed(address) is allowed


def test_admin_outside_the_admin_networks_is_404_login_included(
    administrator: User, settings: Any, security_events: Callable[[str], list[Any]]
) -> None:
    import ipaddress

    settings.PORTAL_ADMIN_NETWORKS = [ipaddress.ip_network("192.0.2.0/24")]
    settings.PORTAL_TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
    outsider = Client(REMOTE_ADDR="198.51.100.7")
    # A forged header from an untrusted peer changes nothing.
    forged = Client(REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR="192.0.2.7")
    proxied = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="192.0.2.7")

    assert outsider.get("/admin/").status_code == HTTPStatus.NOT_FOUND
    assert forged.get(LOGIN).status_code == HTTPStatus.NOT_FOUND
    posted = outsider.post(LOGIN, {"username": "root", "password": PASSWORD})
    assert posted.status_code == HTTPStatus.NOT_FOUND
    assert "_auth_user_id" not in outsider.session
    assert proxied.get(LOGIN).status_code == HTTPStatus.OK
    assert Client(REMOTE_ADDR="192.0.2.8").get(LOGIN).status_code == HTTPStatus.OK
    assert outsider.get("/healthz").status_code == HTTPStatus.OK  # only /admin/ is closed
    assert len(security_events("admin.refused")) == 3
    assert security_events("admin.login") == []  # no password was ever checked


# ----- actions and DCLOGIN codes are audited ---------------------------------------------


def accounts_of(provider: Provider, *names: str) -> list[MailAccount]:
    domain = provider.domains.get()
    return [
        create_account(domain=domain, local_part=name, password=PASSWORD, created_via="api")
        for name in names
    ]


@pytest.mark.django_db
def test_an_admin_action_and_each_dclogin_code_it_makes_are_audited(
    administrator: User,
    make_provider: Callable[..., Provider],
    security_events: Callable[[str], list[Any]],
) -> None:
    accounts = accounts_of(make_provider(), "anna", "ben")
    client = Client(REMOTE_ADDR="192.0.2.90")
    client.force_login(administrator)

    page = client.post(
        "/admin/accounts/mailaccount/",
        {"action": "reset_passwords", "_selected_action": [a.pk for a in accounts]},
    )

    assert page.status_code == HTTPStatus.OK
    (action,) = security_events("admin.action")
    assert action["actor"] == "root" and action["ip"] == "192.0.2.90"
    assert action["action"] == "reset_passwords" and action["model"] == "accounts.mailaccount"
    assert action["objects"] == 2
    codes = security_events("dclogin.generated")
    assert sorted(c["account"] for c in codes) == ["anna@example.org", "ben@example.org"]
    assert {(c["actor"], c["ip"], c["via"]) for c in codes} == {
        ("root", "192.0.2.90", "admin page")
    }
    for account in accounts:
        (entry,) = LogEntry.objects.filter(object_id=str(account.pk))
        assert entry.user_id == administrator.pk
        assert "DCLOGIN code generated" in entry.get_change_message()
    assert security_events("admin.change") == []  # the history entries are the same events
    # The new passwords are on the page, never in an event.
    shown = page.content.decode()
    text = json.dumps(security_events("dclogin.generated") + security_events("admin.action"))
    for account in MailAccount.objects.all():
        assert account.address in shown
    assert PASSWORD not in text and "DCLOGIN:" not in text.upper()


@pytest.mark.django_db
def test_an_admin_change_is_one_admin_change_event(
    administrator: User,
    make_provider: Callable[..., Provider],
    security_events: Callable[[str], list[Any]],
) -> None:
    account = create_account(
        domain=make_provider().domains.get(), local_part="cleo", password=PASSWORD,
        created_via="api",
    )  # fmt: skip
    client = Client(REMOTE_ADDR="192.0.2.91")
    client.force_login(administrator)
    form = client.get(f"/admin/accounts/mailaccount/{account.pk}/change/")
    assert form.status_code == HTTPStatus.OK

    import lxml.html

    values = dict(
        lxml.html.fromstring(form.content).get_element_by_id("mailaccount_form").form_values()
    )
    values["full_name"] = "Cleo Patra"
    answer = client.post(f"/admin/accounts/mailaccount/{account.pk}/change/", values)

    assert answer.status_code == HTTPStatus.FOUND, answer.content[:2000]
    (change,) = security_events("admin.change")
    assert change["outcome"] == "change" and change["actor"] == "root"
    assert change["model"] == "accounts.mailaccount" and change["object_id"] == str(account.pk)
    assert "Full name" in change["change"] or "full_name" in change["change"].lower()


@pytest.mark.django_db
def test_each_code_of_a_sheet_job_is_audited_as_its_administrators(
    administrator: User,
    make_provider: Callable[..., Provider],
    security_events: Callable[[str], list[Any]],
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import SheetJob
    from accounts.services.sheets import build_sheet

    accounts = accounts_of(make_provider(), "dora", "emil")
    job = SheetJob.objects.create(
        created_by=administrator,
        account_ids=[a.pk for a in accounts],
        total=2,
        expires_at=timezone.now() + timedelta(hours=1),
    )

    build_sheet(job_id=job.pk)

    codes = security_events("dclogin.generated")
    assert sorted(c["account"] for c in codes) == ["dora@example.org", "emil@example.org"]
    assert {(c["actor"], c["via"]) for c in codes} == {("root", f"sheet {job.pk}")}
    for account in accounts:
        (entry,) = LogEntry.objects.filter(object_id=str(account.pk))
        assert entry.user_id == administrator.pk
        assert f"sheet {job.pk}" in entry.get_change_message()
