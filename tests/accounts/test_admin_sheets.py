"""DCLOGIN codes on the passwords page, and batch onboarding sheets with one download."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pypdfium2
import pytest
import zxingcpp
from django.contrib.auth.models import User
from django.test import Client
from PIL import Image

from accounts import passwords
from accounts.models import MailAccount, SheetJob
from accounts.services.accounts import create_account
from providers.models import Provider

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/accounts/mailaccount/"


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider(
        servers=(
            {
                "type": "imap",
                "hostname": "imap.example.org",
                "port": 1143,
                "socket_type": "STARTTLS",
            },
            {
                "type": "smtp",
                "hostname": "smtp.example.org",
                "port": 2525,
                "socket_type": "STARTTLS",
            },
        )
    )


def codes_in(data: bytes) -> list[str]:
    return [result.text for result in zxingcpp.read_barcodes(Image.open(io.BytesIO(data)))]


def pdf_codes(pdf: bytes) -> list[str]:
    document = pypdfium2.PdfDocument(pdf)
    try:
        return sorted(
            result.text
            for page in document
            for result in zxingcpp.read_barcodes(page.render(scale=200 / 72).to_pil())
        )
    finally:
        document.close()


def login_of(code: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(code)
    return parts.path, parse_qs(parts.query)


def test_creating_an_account_shows_its_dclogin_code_once_with_real_settings(
    admin_client: Client, provider: Provider
) -> None:
    response = admin_client.post(
        CHANGELIST + "add/",
        {"domain": provider.domains.get().pk, "local_part": "romeo", "password": ""},
    )

    html = response.content.decode()
    assert response.status_code == HTTPStatus.OK and "no-store" in response["Cache-Control"]
    png = re.search(r'href="data:image/png;base64,([^"]+)"', html)
    assert png
    [code] = codes_in(base64.b64decode(png.group(1)))
    address, query = login_of(code)
    assert address == "romeo@example.org"
    assert (query["ih"], query["ip"], query["is"]) == (["imap.example.org"], ["1143"], ["starttls"])
    assert (query["sh"], query["sp"], query["ss"]) == (["smtp.example.org"], ["2525"], ["starttls"])
    account = MailAccount.objects.get(local_part="romeo")
    assert passwords.verify_password(query["p"][0], account.password)
    pdf = re.search(r'href="data:application/pdf;base64,([^"]+)"', html)
    assert pdf and pdf_codes(base64.b64decode(pdf.group(1))) == [code]
    svg = re.search(r'href="data:image/svg\+xml;base64,([^"]+)"', html)
    assert svg and base64.b64decode(svg.group(1)).startswith(b"<?xml")


def test_a_typed_password_also_gets_its_code_but_is_not_shown(
    admin_client: Client, provider: Provider
) -> None:
    typed = "Typed+password&with#marks"
    response = admin_client.post(
        CHANGELIST + "add/",
        {"domain": provider.domains.get().pk, "local_part": "juliet", "password": typed},
    )

    html = response.content.decode()
    assert "(the one you typed)" in html
    png = re.search(r'href="data:image/png;base64,([^"]+)"', html)
    assert png
    [code] = codes_in(base64.b64decode(png.group(1)))
    assert login_of(code)[1]["p"] == [typed]


def test_resetting_passwords_shows_the_new_codes(admin_client: Client, provider: Provider) -> None:
    accounts = [
        create_account(
            domain="example.org", local_part=name, password="x" * 12 + name, created_via="admin"
        )
        for name in ("anna", "bert")
    ]

    response = admin_client.post(
        CHANGELIST,
        {"action": "reset_passwords", "_selected_action": [a.pk for a in accounts]},
    )

    html = response.content.decode()
    pdf = re.search(r'href="data:application/pdf;base64,([^"]+)"', html)
    assert pdf
    codes = pdf_codes(base64.b64decode(pdf.group(1)))
    assert [login_of(code)[0] for code in codes] == ["anna@example.org", "bert@example.org"]
    for account, code in zip(accounts, codes, strict=True):
        account.refresh_from_db()
        assert passwords.verify_password(login_of(code)[1]["p"][0], account.password)


def test_sheet_action_asks_first_then_builds_with_progress_and_downloads_once(
    admin_client: Client,
    provider: Provider,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    accounts = [
        create_account(
            domain="example.org",
            local_part=f"user{i}",
            password="y" * 14 + str(i),
            created_via="admin",
        )
        for i in range(12)
    ]
    selected = {"action": "onboarding_sheet", "_selected_action": [a.pk for a in accounts]}

    asked = admin_client.post(CHANGELIST, selected)
    assert "12 accounts are reset" in asked.content.decode()
    assert not SheetJob.objects.exists()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        started = admin_client.post(CHANGELIST, {**selected, "confirm": "yes"})
    assert len(callbacks) == 1
    job = SheetJob.objects.get()
    assert started.status_code == HTTPStatus.FOUND
    assert started["Location"] == f"/admin/accounts/sheetjob/{job.pk}/progress/"

    progress = admin_client.get(started["Location"])
    html = progress.content.decode()
    assert '<progress max="12" value="12">' in html and "ready to download" in html

    assert admin_client.get(f"/admin/accounts/sheetjob/{job.pk}/download/").status_code == 302
    download = admin_client.post(f"/admin/accounts/sheetjob/{job.pk}/download/")
    assert download.status_code == HTTPStatus.OK
    assert download["Content-Type"] == "application/pdf"
    codes = pdf_codes(download.content)
    assert [login_of(code)[0] for code in codes] == sorted(a.address for a in accounts)
    assert not SheetJob.objects.exists()  # deleted by the download

    again = admin_client.post(f"/admin/accounts/sheetjob/{job.pk}/download/", follow=True)
    assert "downloaded already or has expired" in again.content.decode()


def test_another_administrator_cannot_see_or_download_my_sheet(
    admin_client: Client, admin_user: User, provider: Provider, settings: Any
) -> None:
    from accounts.services import sheets

    settings.CELERY_TASK_ALWAYS_EAGER = True
    account = create_account(
        domain="example.org", local_part="anna", password="z" * 16, created_via="admin"
    )
    job = sheets.start_sheet(account_ids=[account.pk], created_by=admin_user)
    sheets.build_sheet(job_id=job.pk)
    other = User.objects.create_superuser("other", "other@example.org", "pw-other-admin-1")
    client = Client()
    client.force_login(other)

    listed = client.get("/admin/accounts/sheetjob/")
    taken = client.post(f"/admin/accounts/sheetjob/{job.pk}/download/", follow=True)

    assert f"sheet {job.pk}" not in listed.content.decode()
    assert "downloaded already or has expired" in taken.content.decode()
    assert SheetJob.objects.filter(pk=job.pk).exists()


def test_a_sheet_started_while_the_broker_is_down_says_so_and_resets_nothing(
    admin_client: Client, provider: Provider, broker_unreachable: Callable[..., Any]
) -> None:
    account = create_account(
        domain="example.org", local_part="anna", password="z" * 16, created_via="admin"
    )
    selected = {"action": "onboarding_sheet", "_selected_action": [account.pk], "confirm": "yes"}

    with broker_unreachable():
        started = admin_client.post(CHANGELIST, selected)
    progress = admin_client.get(started["Location"])

    assert started.status_code == HTTPStatus.FOUND  # not a 500
    assert SheetJob.objects.get().state == SheetJob.State.FAILED
    html = progress.content.decode()
    assert "not reachable" in html and "No password was changed" in html
    account.refresh_from_db()
    assert passwords.verify_password("z" * 16, account.password)


def test_a_sheet_made_under_an_old_secret_key_is_refused_with_a_message(
    admin_client: Client, admin_user: User, provider: Provider, settings: Any
) -> None:
    from accounts.services import sheets

    account = create_account(
        domain="example.org", local_part="anna", password="z" * 16, created_via="admin"
    )
    job = sheets.start_sheet(account_ids=[account.pk], created_by=admin_user)
    sheets.build_sheet(job_id=job.pk)
    settings.SECRET_KEY = "rotated-" + "k" * 50
    admin_client.force_login(admin_user)  # the session was signed with the old key

    download = admin_client.post(f"/admin/accounts/sheetjob/{job.pk}/download/", follow=True)

    assert download.status_code == HTTPStatus.OK
    assert "can no longer be read" in download.content.decode()
