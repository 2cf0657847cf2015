"""The onboarding console: issue tokens (codes shown once), revoke, new secrets, logos."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pypdfium2
import pytest
import zxingcpp
from PIL import Image

from accounts.models import MailAccount
from providers.models import OnboardingToken, Provider, token_digest
from providers.services import onboarding

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/providers/onboardingtoken/"
ADD = CHANGELIST + "add/"


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider()


def add_token(admin_client: Any, provider: Provider, **fields: Any) -> Any:
    data = {
        "name": "workshop",
        "domain": provider.domains.get().pk,
        "prefix": "ws.",
        "max_uses": 25,
        "valid_for": "2w",
        "lifetime": "30d",
        **fields,
    }
    return admin_client.post(ADD, data)


def data_uri(html: str, mime: str) -> bytes:
    found = re.search(rf'href="data:{re.escape(mime)};base64,([^"]+)"', html)
    assert found, f"no {mime} download in the page"
    return base64.b64decode(found.group(1))


def test_adding_a_token_shows_its_code_once_as_text_png_svg_and_pdf(
    admin_client: Any, provider: Provider, settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example.org"

    response = add_token(admin_client, provider)

    assert response.status_code == HTTPStatus.OK
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    token = OnboardingToken.objects.get(name="workshop")
    found = re.search(r"DCACCOUNT:https://portal\.example\.org/dcaccount/([A-Za-z0-9_-]+)", html)
    assert found
    secret = found.group(1)
    assert token_digest(secret) == token.token_sha256
    assert token.max_uses == 25 and token.prefix == "ws."
    assert token.account_lifetime is not None and token.account_lifetime.days == 30
    assert token.expires_at is not None and 13 <= (token.expires_at - token.created_at).days <= 14
    assert token.created_by is not None and token.created_by.username == "admin"
    text = found.group(0)
    png = Image.open(io.BytesIO(data_uri(html, "image/png")))
    assert [result.text for result in zxingcpp.read_barcodes(png)] == [text]
    assert data_uri(html, "image/svg+xml").startswith(b"<?xml")
    pdf = pypdfium2.PdfDocument(data_uri(html, "application/pdf"))
    page = pdf[0].render(scale=2).to_pil()
    pdf.close()
    assert [result.text for result in zxingcpp.read_barcodes(page)] == [text]
    assert "<svg " in html  # the printable card, inline


def test_adding_a_token_with_an_http_portal_says_why_no_code_is_printed(
    admin_client: Any, provider: Provider, settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "http://127.0.0.1:8000"

    response = add_token(admin_client, provider)

    html = response.content.decode()
    assert response.status_code == HTTPStatus.OK
    # No code for Delta Chat to misread: neither its text nor any image or PDF of it.
    assert "DCACCOUNT:http://127.0.0.1" not in html
    assert "data:image/" not in html and "data:application/pdf" not in html
    assert 'class="qr-cards"' not in html  # the printable card with its inline SVG code
    assert "DCACCOUNT codes need an https PORTAL_BASE_URL" in html
    assert "http://127.0.0.1:8000/dcaccount/" in html  # for a test with curl
    assert OnboardingToken.objects.filter(name="workshop").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"valid_for": "soon"}, "is not a duration"),
        ({"lifetime": "0d"}, "longer than zero"),
        ({"prefix": "a..b"}, "not twice"),
        ({"max_uses": 0}, "greater than or equal to 1"),
    ],
)
def test_adding_a_token_with_bad_input_shows_the_reason_and_creates_nothing(
    admin_client: Any, provider: Provider, fields: dict[str, Any], message: str
) -> None:
    response = add_token(admin_client, provider, **fields)

    assert response.status_code == HTTPStatus.OK
    assert message in response.content.decode()
    assert not OnboardingToken.objects.exists()


def test_changelist_shows_uses_state_and_accounts_and_searches(
    admin_client: Any, make_token: Callable[..., Any]
) -> None:
    issued = make_token(name="spring", max_uses=3)
    onboarding.redeem_token(secret=issued.secret)
    make_token(name="autumn")

    response = admin_client.get(CHANGELIST, {"q": "spring"})

    html = response.content.decode()
    assert response.status_code == HTTPStatus.OK
    assert "spring" in html and "autumn" not in html
    assert "1 / 3" in html and "usable" in html


def test_token_page_lists_the_accounts_it_made_and_never_the_secret(
    admin_client: Any, make_token: Callable[..., Any]
) -> None:
    issued = make_token(max_uses=2)
    made = onboarding.redeem_token(secret=issued.secret)

    response = admin_client.get(f"{CHANGELIST}{issued.token.pk}/change/")

    html = response.content.decode()
    assert made.address in html
    assert issued.secret not in html and issued.token.token_sha256 not in html
    accounts = admin_client.get(
        "/admin/accounts/mailaccount/", {"onboarding_token": issued.token.pk}
    )
    assert made.address in accounts.content.decode()


def test_revoke_action_reports_counts_and_stops_the_codes(
    admin_client: Any, make_token: Callable[..., Any]
) -> None:
    first, second = make_token(), make_token()
    onboarding.revoke_token(token=second.token)

    response = admin_client.post(
        CHANGELIST,
        {"action": "revoke_tokens", "_selected_action": [first.token.pk, second.token.pk]},
        follow=True,
    )

    assert "1 revoked, 1 were revoked already." in response.content.decode()
    with pytest.raises(onboarding.TokenRevoked):
        onboarding.redeem_token(secret=first.secret)


def test_new_secrets_ask_first_then_show_the_new_codes_once(
    admin_client: Any, make_token: Callable[..., Any], settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example.org"
    issued = make_token()
    selected = {"action": "replace_secrets", "_selected_action": [issued.token.pk]}

    asked = admin_client.post(CHANGELIST, selected)
    done = admin_client.post(CHANGELIST, {**selected, "confirm": "yes"})

    assert "stop working" in asked.content.decode()
    issued.token.refresh_from_db()
    assert issued.token.token_sha256 != token_digest(issued.secret)
    found = re.search(r"DCACCOUNT:https://[^/]+/dcaccount/([A-Za-z0-9_-]+)", done.content.decode())
    assert found and token_digest(found.group(1)) == issued.token.token_sha256
    with pytest.raises(onboarding.TokenUnknown):
        onboarding.redeem_token(secret=issued.secret)
    assert MailAccount.objects.count() == 0


def test_the_token_page_prints_the_providers_logo(
    admin_client: Any, provider: Provider, settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example.org"
    logo = io.BytesIO()
    Image.new("RGB", (900, 300), (10, 120, 200)).save(logo, format="WEBP")
    Provider.objects.filter(pk=provider.pk).update(logo=logo.getvalue(), logo_type="image/webp")

    html = add_token(admin_client, provider).content.decode()

    found = re.search(r'<img class="qr-logo" src="data:image/png;base64,([^"]+)"', html)
    assert found
    printed = Image.open(io.BytesIO(base64.b64decode(found.group(1))))
    assert printed.format == "PNG" and printed.size == (600, 200)


# ----- who may act: the administrator, a view-only staff member, a stranger -------------------

TOKEN_ACTIONS = [
    ("revoke_tokens", {}),
    ("replace_secrets", {"confirm": "yes"}),
]


def _staff(django_user_model: Any, name: str, *codenames: str) -> Any:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(name, password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def _token_row(token: OnboardingToken) -> tuple[Any, ...]:
    return tuple(
        OnboardingToken.objects.filter(pk=token.pk).values_list("revoked_at", "token_sha256")[0]
    )


def test_every_token_action_names_the_permission_it_needs() -> None:
    from django.contrib import admin

    from providers.admin_onboarding import OnboardingTokenAdmin

    model_admin = OnboardingTokenAdmin(OnboardingToken, admin.site)
    for name in model_admin.actions:
        action = getattr(model_admin, name)
        assert getattr(action, "allowed_permissions", ()), f"{name} has no permissions="


@pytest.mark.parametrize(("action", "extra"), TOKEN_ACTIONS)
def test_token_actions_are_for_administrators_only(
    client: Any,
    django_user_model: Any,
    make_token: Callable[..., Any],
    settings: Any,
    action: str,
    extra: dict[str, str],
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example.org"
    issued = make_token()
    before = _token_row(issued.token)
    administrator = _staff(
        django_user_model, "administrator", "view_onboardingtoken", "change_onboardingtoken"
    )
    viewer = _staff(django_user_model, "viewer", "view_onboardingtoken")
    stranger = django_user_model.objects.create_user("stranger", password="x")
    post = {"action": action, "_selected_action": [issued.token.pk], **extra}

    client.force_login(viewer)
    viewer_listing = client.get(CHANGELIST)
    as_viewer = client.post(CHANGELIST, post, follow=True)
    client.force_login(stranger)
    as_stranger = client.post(CHANGELIST, post)
    assert _token_row(issued.token) == before  # neither changed anything
    client.force_login(administrator)
    listing = client.get(CHANGELIST)
    as_administrator = client.post(CHANGELIST, post)

    assert viewer_listing.status_code == HTTPStatus.OK  # the viewer sees the list...
    assert f'value="{action}"' not in viewer_listing.content.decode()  # ...without the action
    assert "DCACCOUNT:" not in as_viewer.content.decode()
    assert as_stranger.status_code == HTTPStatus.FOUND
    assert as_stranger["Location"].startswith("/admin/login/")
    assert f'value="{action}"' in listing.content.decode()
    assert as_administrator.status_code in (HTTPStatus.OK, HTTPStatus.FOUND)
    assert _token_row(issued.token) != before  # the administrator's took effect


def test_a_view_only_staff_member_cannot_change_a_token(
    client: Any, django_user_model: Any, make_token: Callable[..., Any]
) -> None:
    issued = make_token(max_uses=3)
    viewer = _staff(django_user_model, "viewer", "view_onboardingtoken")
    client.force_login(viewer)

    response = client.post(
        f"{CHANGELIST}{issued.token.pk}/change/", {"name": "renamed", "max_uses": 99}
    )

    assert response.status_code == HTTPStatus.FORBIDDEN
    issued.token.refresh_from_db()
    assert issued.token.max_uses == 3 and issued.token.name != "renamed"


# ----- the token's page writes only what it edits -----------------------------------------------


def test_editing_a_token_keeps_a_use_a_revocation_and_a_new_secret_made_meanwhile(
    admin_client: Any, make_token: Callable[..., Any]
) -> None:
    from django.db.models import F

    from tests.accounts.test_admin_edit import form_fields, just_before_saving

    issued = make_token(max_uses=3)
    url = f"{CHANGELIST}{issued.token.pk}/change/"
    values = form_fields(admin_client.get(url).content, "onboardingtoken_form")
    values.update(name="renamed", max_uses="5")
    renewed: list[onboarding.IssuedToken] = []

    def meanwhile(loaded: OnboardingToken) -> None:
        # A redemption's claim, a revocation and a new secret, each with its own UPDATE.
        OnboardingToken.objects.filter(pk=loaded.pk).update(use_count=F("use_count") + 1)
        onboarding.revoke_token(token=OnboardingToken.objects.get(pk=loaded.pk))
        renewed.append(onboarding.replace_secret(token=OnboardingToken.objects.get(pk=loaded.pk)))

    with just_before_saving(OnboardingToken, meanwhile):
        response = admin_client.post(url, values)

    assert response.status_code == HTTPStatus.FOUND, response.content.decode()[:2000]
    token = OnboardingToken.objects.get(pk=issued.token.pk)
    assert (token.name, token.max_uses) == ("renamed", 5)
    assert token.use_count == 1
    assert token.revoked_at is not None
    assert token.token_sha256 == token_digest(renewed[0].secret)
