"""Who may do what in the mail-account console: every action and custom page, three personas.

The administrator (staff with the mail-account permissions), a view-only staff member and
a stranger (a user who is not staff). Django offers an action to anyone who may open the
list unless the action names its permission; the custom sheet pages are reached through
admin_view, which checks only is_staff. So each is tried by each persona here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from accounts.admin import MailAccountAdmin
from accounts.models import AccountStatus, MailAccount, SheetJob
from accounts.services import sheets
from accounts.services.accounts import create_account
from providers.models import Provider

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/accounts/mailaccount/"


@dataclass(frozen=True)
class Personas:
    administrator: User
    viewer: User
    stranger: User

    def client(self, user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client


@pytest.fixture
def personas(django_user_model: Any) -> Personas:
    def staff(name: str, *codenames: str) -> User:
        user: User = django_user_model.objects.create_user(name, password="x", is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
        return user

    return Personas(
        administrator=staff(
            "administrator", "view_mailaccount", "change_mailaccount", "delete_mailaccount"
        ),
        viewer=staff("viewer", "view_mailaccount"),
        stranger=django_user_model.objects.create_user("stranger", password="x"),
    )


@pytest.fixture
def account(make_provider: Callable[..., Provider]) -> MailAccount:
    make_provider()
    return create_account(
        domain="example.org",
        local_part="anna",
        password="Anna-first-password-1",
        created_via="admin",
    )


@dataclass(frozen=True)
class Case:
    action: str
    status: AccountStatus  # the account's status before
    extra: dict[str, str]  # the confirmation step's fields

    def changed(self, before: MailAccount) -> bool:
        """Whether the action did anything to the account (or made a sheet of it)."""
        after = MailAccount.objects.filter(pk=before.pk).first()
        return (
            after is None
            or after.status != before.status
            or after.password != before.password
            or SheetJob.objects.exists()
        )


CASES = [
    Case("approve_accounts", AccountStatus.APPROVAL, {}),
    Case("disable_accounts", AccountStatus.ACTIVE, {}),
    Case("enable_accounts", AccountStatus.DISABLED, {}),
    Case("reset_passwords", AccountStatus.ACTIVE, {}),
    Case("onboarding_sheet", AccountStatus.ACTIVE, {"confirm": "yes"}),
    Case("delete_selected", AccountStatus.ACTIVE, {"post": "yes"}),
]


def _prepare(account: MailAccount, case: Case) -> MailAccount:
    MailAccount.objects.filter(pk=account.pk).update(status=case.status)
    return MailAccount.objects.get(pk=account.pk)


def test_every_account_action_names_the_permission_it_needs() -> None:
    model_admin = MailAccountAdmin(MailAccount, admin.site)
    for name in model_admin.actions:
        action = getattr(model_admin, name) if isinstance(name, str) else name
        assert getattr(action, "allowed_permissions", ()), f"{name} has no permissions="


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.action)
def test_the_administrator_may_run_each_account_action(
    personas: Personas, account: MailAccount, case: Case, settings: Any
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    before = _prepare(account, case)
    client = personas.client(personas.administrator)

    listing = client.get(CHANGELIST)
    client.post(CHANGELIST, {"action": case.action, "_selected_action": [account.pk], **case.extra})

    assert f'value="{case.action}"' in listing.content.decode()
    assert case.changed(before)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.action)
def test_a_view_only_staff_member_is_offered_no_account_action_and_changes_nothing(
    personas: Personas, account: MailAccount, case: Case, settings: Any
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    before = _prepare(account, case)
    client = personas.client(personas.viewer)

    listing = client.get(CHANGELIST)
    tried = client.post(
        CHANGELIST, {"action": case.action, "_selected_action": [account.pk], **case.extra}
    )

    assert listing.status_code == HTTPStatus.OK  # they may look...
    assert f'value="{case.action}"' not in listing.content.decode()  # ...but not act
    assert "Anna-" not in tried.content.decode() and "dclogin:" not in tried.content.decode()
    assert not case.changed(before)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.action)
def test_a_stranger_is_sent_to_the_login_page_and_changes_nothing(
    personas: Personas, account: MailAccount, case: Case
) -> None:
    before = _prepare(account, case)
    client = personas.client(personas.stranger)

    tried = client.post(
        CHANGELIST, {"action": case.action, "_selected_action": [account.pk], **case.extra}
    )

    assert tried.status_code == HTTPStatus.FOUND
    assert tried["Location"].startswith("/admin/login/")
    assert not case.changed(before)


# ----- the sheet's own pages -----------------------------------------------------------------


def _built_sheet(account: MailAccount, owner: User) -> SheetJob:
    job = sheets.start_sheet(account_ids=[account.pk], created_by=owner)
    built = sheets.build_sheet(job_id=job.pk)
    assert built is not None and built.state == SheetJob.State.DONE
    return built


def test_the_administrator_follows_and_downloads_their_own_sheet(
    personas: Personas, account: MailAccount
) -> None:
    job = _built_sheet(account, personas.administrator)
    client = personas.client(personas.administrator)

    progress = client.get(f"/admin/accounts/sheetjob/{job.pk}/progress/")
    listing = client.get("/admin/accounts/sheetjob/")
    download = client.post(f"/admin/accounts/sheetjob/{job.pk}/download/")

    assert progress.status_code == HTTPStatus.OK
    assert "ready to download" in progress.content.decode()
    assert listing.status_code == HTTPStatus.OK and f"sheet {job.pk}" in listing.content.decode()
    assert download.status_code == HTTPStatus.OK
    assert download["Content-Type"] == "application/pdf"


def test_a_view_only_staff_member_can_neither_follow_nor_download_a_sheet(
    personas: Personas, account: MailAccount
) -> None:
    # Made while they still could change accounts: the permission is checked on each page.
    job = _built_sheet(account, personas.viewer)
    client = personas.client(personas.viewer)

    progress = client.get(f"/admin/accounts/sheetjob/{job.pk}/progress/")
    listing = client.get("/admin/accounts/sheetjob/")
    download = client.post(f"/admin/accounts/sheetjob/{job.pk}/download/")

    assert progress.status_code == HTTPStatus.FORBIDDEN
    assert listing.status_code == HTTPStatus.FORBIDDEN
    assert download.status_code == HTTPStatus.FORBIDDEN
    assert SheetJob.objects.filter(pk=job.pk, state=SheetJob.State.DONE).exists()


def test_a_stranger_is_sent_to_the_login_page_by_the_sheet_pages(
    personas: Personas, account: MailAccount
) -> None:
    job = _built_sheet(account, personas.stranger)
    client = personas.client(personas.stranger)

    for response in (
        client.get(f"/admin/accounts/sheetjob/{job.pk}/progress/"),
        client.post(f"/admin/accounts/sheetjob/{job.pk}/download/"),
    ):
        assert response.status_code == HTTPStatus.FOUND
        assert response["Location"].startswith("/admin/login/")
    assert SheetJob.objects.filter(pk=job.pk).exists()


def test_another_administrator_does_not_see_the_progress_of_my_sheet(
    personas: Personas, account: MailAccount, django_user_model: Any
) -> None:
    job = _built_sheet(account, personas.administrator)
    other = django_user_model.objects.create_superuser("other", "o@example.org", "x")
    client = personas.client(other)

    progress = client.get(f"/admin/accounts/sheetjob/{job.pk}/progress/")

    assert progress.status_code == HTTPStatus.OK
    assert "downloaded already or has expired" in progress.content.decode()
    assert "ready to download" not in progress.content.decode()
    assert SheetJob.objects.filter(pk=job.pk, expires_at__gt=timezone.now()).exists()
