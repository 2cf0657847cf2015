"""The hosted registration pages /register/<slug>/ (providers/views_registration.py).

Driven with Django's test client as a browser without JavaScript would: read the form on
the page, fill it, post it. RELIABILITY.md check 22 (credentials round-trip exactly) and the
page side of check 14 (headers, CSRF cookie) are here; the browser, the plain-HTTP flow,
the race with the API (check 1) and the https deployment are in tests/e2e/.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as DET
import lxml.html
import pytest
import time_machine
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone
from django.utils.log import AdminEmailHandler
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

from accounts.mailbox import _load as load_backend
from accounts.models import AccountStatus, MailAccount
from accounts.passwords import verify_password
from accounts.services.reconcile import reconcile_mailboxes
from providers import views_registration
from providers.models import Provider
from providers.services.registration import Flow
from tests.conftest import form_values

START = "/register/example/"
ENTRY = START + "?email=juliet@example.org&first_name=Juliet&last_name=Capulet"
PASSWORD = "Balcony-at-midnight-42"
TERMS = {"tos_url": "https://example.org/tos", "privacy_url": "https://example.org/privacy"}


@pytest.fixture(autouse=True)
def _no_rate_limit(settings: Any) -> None:
    # The tests about the limit switch it on again, with addresses of their own.
    settings.RATELIMIT_ENABLE = False


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider(**TERMS)


@pytest.fixture
def juliet_taken(provider: Provider) -> None:
    """juliet@example.org exists already."""
    MailAccount.objects.create(
        domain=provider.domains.get(), local_part="juliet", password="x", created_via="admin"
    )


def html(response: Any) -> str:
    return str(response.content.decode())


def to_password_step(client: Client, local_part: str = "juliet", **headers: Any) -> Any:
    """Open the entry page and send its address form with `local_part`."""
    page = client.get(ENTRY, **headers)
    assert page.status_code == HTTPStatus.OK, html(page)
    values = form_values(page.content, "/address") | {"local_part": local_part}
    return client.post(START + "address", values, **headers)


def finish(client: Client, page: Any, password: str = PASSWORD, **extra: str) -> Any:
    values = form_values(page.content, "/password") | {
        "password": password,
        "password_again": password,
        "accept_terms": "on",
        **extra,
    }
    return client.post(START + "password", values)


def errors_of(page: Any, field: str) -> list[str]:
    """The error messages shown next to `field`, found through its aria-describedby."""
    document = lxml.html.fromstring(page.content)
    (widget,) = document.xpath(f'//*[@name="{field}"][not(@type="hidden")]')
    assert widget.get("aria-invalid") == "true"
    ids = (widget.get("aria-describedby") or "").split()
    return [
        item.text_content().strip()
        for element_id in ids
        if element_id.endswith("-errors")
        for item in document.get_element_by_id(element_id).iter("li")
    ]


def parsed(document: bytes) -> Any:
    return DET.fromstring(document)


# ----- the flow -------------------------------------------------------------------------------


def test_entry_page_prefills_the_address_and_names_from_the_query(
    client: Client, provider: Provider
) -> None:
    page = client.get(ENTRY)

    assert page.status_code == HTTPStatus.OK
    values = form_values(page.content, "/address")
    assert (values["local_part"], values["domain"]) == ("juliet", "example.org")
    assert (values["first_name"], values["last_name"]) == ("Juliet", "Capulet")
    assert "Example Mail" in html(page)
    assert not MailAccount.objects.exists()


def test_registration_ends_in_the_clientconfig_with_the_literal_credentials(
    client: Client, provider: Provider, validate_clientconfig: Callable[[bytes], list[str]]
) -> None:
    step = to_password_step(client)
    assert "juliet@example.org" in html(step)

    answer = finish(client, step)

    assert answer.status_code == HTTPStatus.OK
    assert answer["Content-Type"] == "text/xml; charset=utf-8"
    assert "no-store" in answer["Cache-Control"]
    assert answer["X-Thunderbird-Account-Name"] == "Juliet Capulet"
    assert answer["X-Thunderbird-Account-Email"] == "juliet@example.org"
    assert validate_clientconfig(answer.content) == []
    root = parsed(answer.content)
    servers = root.findall("emailProvider/incomingServer") + root.findall(
        "emailProvider/outgoingServer"
    )
    assert [(s.findtext("username"), s.findtext("password")) for s in servers] == [
        ("juliet@example.org", PASSWORD)
    ] * 2
    account = MailAccount.objects.get()
    assert (account.address, account.full_name) == ("juliet@example.org", "Juliet Capulet")
    assert (account.created_via, account.status) == ("hosted", AccountStatus.ACTIVE)


def test_each_server_gets_its_own_literal_username(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(
        servers=(
            {"type": "imap", "hostname": "imap.example.org", "port": 993},
            {
                "type": "smtp",
                "hostname": "smtp.example.org",
                "port": 587,
                "socket_type": "STARTTLS",
                "username": "%EMAILLOCALPART%",
            },
        ),
        **TERMS,
    )
    answer = finish(client, to_password_step(client))

    root = parsed(answer.content)
    assert root.findtext("emailProvider/incomingServer/username") == "juliet@example.org"
    assert root.findtext("emailProvider/outgoingServer/username") == "juliet"


def test_a_taken_address_is_refused_next_to_the_field_with_free_alternatives(
    client: Client, provider: Provider, juliet_taken: None
) -> None:
    page = to_password_step(client)

    assert page.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(page, "local_part") == ["This address is already taken."]
    offered = lxml.html.fromstring(page.content).xpath('//button[@name="choose"]/@value')
    assert "juliet.capulet@example.org" in offered
    assert "juliet@example.org" not in offered
    assert MailAccount.objects.count() == 1


def test_choosing_an_offered_alternative_leads_to_the_password_step(
    client: Client, provider: Provider, juliet_taken: None
) -> None:
    taken = to_password_step(client)
    values = form_values(taken.content, "/address") | {"choose": "juliet.capulet@example.org"}

    step = client.post(START + "address", values)
    answer = finish(client, step)

    assert answer.status_code == HTTPStatus.OK
    assert answer["X-Thunderbird-Account-Email"] == "juliet.capulet@example.org"
    assert MailAccount.objects.filter(local_part="juliet.capulet").exists()


@pytest.fixture
def two_domains(make_provider: Callable[..., Provider]) -> Provider:
    """example.org (the main domain, where suggestions are) and example.net, where juliet
    and juliet.capulet are taken."""
    provider = make_provider(domains=("example.org", "example.net"), **TERMS)
    net = provider.domains.get(name="example.net")
    for local_part in ("juliet", "juliet.capulet"):
        MailAccount.objects.create(
            domain=net, local_part=local_part, password="x", created_via="admin"
        )
    return provider


def refused_at_example_net(client: Client) -> Any:
    page = client.get(START + "?email=juliet@example.net&first_name=Juliet&last_name=Capulet")
    values = form_values(page.content, "/address")
    assert (values["local_part"], values["domain"]) == ("juliet", "example.net")
    taken = client.post(START + "address", values)
    assert errors_of(taken, "local_part") == ["This address is already taken."]
    return taken


def test_an_alternative_at_another_domain_is_checked_and_registered_there(
    client: Client, two_domains: Provider
) -> None:
    taken = refused_at_example_net(client)
    offered = lxml.html.fromstring(taken.content).xpath('//button[@name="choose"]/@value')
    assert "juliet.capulet@example.org" in offered  # taken at example.net, free here
    values = form_values(taken.content, "/address") | {"choose": "juliet.capulet@example.org"}

    step = client.post(START + "address", values)
    assert step.status_code == HTTPStatus.OK, errors_of(step, "local_part")
    chosen = lxml.html.fromstring(step.content).find_class("chosen__address")[0]
    assert chosen.text_content() == "juliet.capulet@example.org"
    answer = finish(client, step)

    assert answer.status_code == HTTPStatus.OK
    assert answer["X-Thunderbird-Account-Email"] == "juliet.capulet@example.org"
    root = parsed(answer.content)
    assert root.findtext("emailProvider/incomingServer/username") == "juliet.capulet@example.org"
    assert sorted(MailAccount.objects.values_list("domain__name", "local_part")) == [
        ("example.net", "juliet"),
        ("example.net", "juliet.capulet"),
        ("example.org", "juliet.capulet"),
    ]


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("juliet.capulet@elsewhere.example", "Choose an address at one of the provider's domains."),
        ("juliet.capulet@", "Choose an address at one of the provider's domains."),
        ("@example.org", "This field is required."),
    ],
)
def test_a_choice_outside_the_providers_domains_is_refused_at_the_address(
    client: Client, two_domains: Provider, choice: str, message: str
) -> None:
    taken = refused_at_example_net(client)
    values = form_values(taken.content, "/address") | {"choose": choice}

    answer = client.post(START + "address", values)

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(answer, "local_part") == [message]
    assert MailAccount.objects.count() == 2


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("postmaster", "This name is reserved."),
        ("ju", "The user name must have 3 to 32 characters."),
        ("-juliet", "The user name cannot start or end with punctuation."),
        ("jul#iet", "Use only the letters a-z, digits and . - _."),
    ],
)
def test_an_invalid_address_is_refused_next_to_the_field(
    client: Client, provider: Provider, typed: str, message: str
) -> None:
    page = to_password_step(client, typed)

    assert page.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(page, "local_part") == [message]
    assert not MailAccount.objects.exists()


def test_names_are_required_for_the_mail_client(client: Client, provider: Provider) -> None:
    page = client.get(START)
    values = form_values(page.content, "/address") | {"local_part": "juliet"}

    answer = client.post(START + "address", values)

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(answer, "first_name") == [
        "Enter your first or last name: your mail program shows it."
    ]


def test_a_weak_password_is_refused_next_to_the_field_and_creates_nothing(
    client: Client, provider: Provider
) -> None:
    step = to_password_step(client)
    policy = lxml.html.fromstring(step.content).get_element_by_id("id_password-hint")
    assert "At least 8 characters" in policy.text_content()  # shown before the first try

    answer = finish(client, step, password="password")

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert answer["Content-Type"].startswith("text/html")
    assert errors_of(answer, "password") == ["This password is too common."]
    assert not MailAccount.objects.exists()
    # The refused page keeps the flow: a good password now succeeds.
    assert finish(client, answer).status_code == HTTPStatus.OK
    assert MailAccount.objects.count() == 1


def test_differing_passwords_and_unaccepted_terms_are_refused(
    client: Client, provider: Provider
) -> None:
    step = to_password_step(client)
    values = form_values(step.content, "/password") | {
        "password": PASSWORD,
        "password_again": PASSWORD + "x",
    }

    answer = client.post(START + "password", values)

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(answer, "password_again") == ["The two passwords differ."]
    assert errors_of(answer, "accept_terms") == [
        "Accept the terms of service and the privacy policy."
    ]
    assert not MailAccount.objects.exists()


def test_without_terms_urls_no_acceptance_is_asked(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider()
    step = to_password_step(client)

    assert step.status_code == HTTPStatus.OK
    assert form_values(step.content, "/password")  # the password step, without a checkbox
    assert 'name="accept_terms"' not in html(step)
    assert finish(client, step, accept_terms="").status_code == HTTPStatus.OK
    assert MailAccount.objects.get().address == "juliet@example.org"


def test_change_address_goes_back_to_the_first_step_keeping_names(
    client: Client, provider: Provider
) -> None:
    step = to_password_step(client)
    values = form_values(step.content, "/address") | {"edit": "1"}

    page = client.post(START + "address", values)

    assert page.status_code == HTTPStatus.OK
    again = form_values(page.content, "/address")
    assert (again["local_part"], again["first_name"]) == ("juliet", "Juliet")
    assert not MailAccount.objects.exists()


# ----- tampering and replay -----------------------------------------------------------------


def flipped(text: str, index: int) -> str:
    """`text` with the character at `index` replaced by another one (never itself)."""
    other = "B" if text[index] == "A" else "A"
    return text[:index] + other + text[index + 1 :]


def test_a_tampered_state_creates_nothing(client: Client, provider: Provider) -> None:
    step = to_password_step(client)
    values = form_values(step.content, "/password") | {
        "password": PASSWORD,
        "password_again": PASSWORD,
        "accept_terms": "on",
    }
    state = values["state"]
    payload, _, signature = state.rpartition(":")
    romeo = Flow(slug="example", first_name="Romeo", local_part="romeo", domain="example.org")
    with override_settings(SECRET_KEY="not-the-portals-key-" + "x" * 40):
        signed_elsewhere = romeo.sign()  # well-formed, signed with another key
    forgeries = {
        "signature changed": flipped(state, len(state) - 1),
        "signed data changed": flipped(payload, 10) + ":" + signature,
        "romeo's data under juliet's signature": romeo.sign().rpartition(":")[0] + ":" + signature,
        "romeo's state signed with another key": signed_elsewhere,
        "cut short": state[: len(state) // 2],
        "empty": "",
    }
    for what, forged in forgeries.items():
        assert forged != state, what
        answer = client.post(START + "password", values | {"state": forged})
        assert answer.status_code == HTTPStatus.BAD_REQUEST, what
        assert "This form was changed or is incomplete" in html(answer), what
    assert not MailAccount.objects.exists()
    # An address posted beside the state is not read at all.
    answer = client.post(START + "password", values | {"local_part": "romeo", "domain": "x"})
    assert answer["X-Thunderbird-Account-Email"] == "juliet@example.org"
    assert list(MailAccount.objects.values_list("local_part", flat=True)) == ["juliet"]


def test_a_state_of_another_provider_is_refused(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(**TERMS)
    make_provider(domains=("other.example",), slug="other", **TERMS)
    step = to_password_step(client)
    values = form_values(step.content, "/password") | {
        "password": PASSWORD,
        "password_again": PASSWORD,
        "accept_terms": "on",
    }

    answer = client.post("/register/other/password", values)

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert "Please start again" in html(answer)
    assert 'href="/register/other/"' in html(answer)
    assert not MailAccount.objects.exists()


def test_replaying_the_finished_form_creates_nothing(client: Client, provider: Provider) -> None:
    step = to_password_step(client)
    assert finish(client, step).status_code == HTTPStatus.OK

    replay = finish(client, step, password=PASSWORD + "-again")

    assert replay.status_code == HTTPStatus.CONFLICT
    assert replay["Content-Type"].startswith("text/html")
    assert errors_of(replay, "local_part") == ["This address is already taken."]
    alert = lxml.html.fromstring(replay.content).get_element_by_id("form-errors")
    assert alert.text_content().strip() == "No account was created. Choose another address."
    assert PASSWORD not in html(replay)
    account = MailAccount.objects.get()  # one, and its password is the first one's
    assert verify_password(PASSWORD, account.password)
    assert not verify_password(PASSWORD + "-again", account.password)


def test_an_expired_page_asks_to_start_again(client: Client, provider: Provider) -> None:
    step = to_password_step(client)
    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        answer = finish(client, step)

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert "expired" in html(answer)
    assert not MailAccount.objects.exists()


def test_a_post_without_the_csrf_token_is_refused_with_a_page(provider: Provider) -> None:
    client = Client(enforce_csrf_checks=True)
    step = to_password_step(client)
    assert step.status_code == HTTPStatus.OK
    values = form_values(step.content, "/password") | {
        "password": PASSWORD,
        "password_again": PASSWORD,
        "accept_terms": "on",
    }
    values.pop("csrfmiddlewaretoken")

    answer = client.post(START + "password", values)

    assert answer.status_code == HTTPStatus.FORBIDDEN
    assert "Please start again" in html(answer)
    assert 'href="/register/example/"' in html(answer)
    assert not MailAccount.objects.exists()


# ----- leaving, closed, token, approval, failures -------------------------------------------


@pytest.mark.parametrize(("action", "code"), [("cancel", "USER_CANCEL"), ("back", "USER_BACK")])
def test_leaving_answers_the_provisioner_error_document(
    client: Client, provider: Provider, action: str, code: str
) -> None:
    page = client.get(ENTRY)
    values = form_values(page.content, "/exit") | {"action": action}

    answer = client.post(START + "exit", values)

    assert answer.status_code == HTTPStatus.OK
    assert answer["Content-Type"] == "text/xml; charset=utf-8"
    root = parsed(answer.content)
    assert root.find("emailProvider").get("id") == "example.org"
    assert root.find("error").get("code") == code
    assert root.findtext("error")


def test_cancel_shows_a_goodbye_page_when_the_provider_chose_it(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(cancel_answer="page")
    page = client.get(ENTRY)

    answer = client.post(START + "exit", form_values(page.content, "/exit") | {"action": "cancel"})

    assert answer.status_code == HTTPStatus.OK
    assert answer["Content-Type"].startswith("text/html")
    assert "<h1>No account created</h1>" in html(answer)


@pytest.mark.parametrize("fields", [{"registration": "closed"}, {"enabled": False}])
def test_a_closed_provider_shows_a_clear_page_that_offers_user_back(
    client: Client, make_provider: Callable[..., Provider], fields: dict[str, Any]
) -> None:
    make_provider(**fields)

    page = client.get(ENTRY)

    assert page.status_code == HTTPStatus.FORBIDDEN
    assert "Registration is closed" in html(page)
    buttons = lxml.html.fromstring(page.content).xpath('//button[@name="action"]/@value')
    assert buttons == ["back", "cancel"]
    assert "/address" not in html(page)


def test_a_provider_closed_during_the_flow_creates_nothing(
    client: Client, provider: Provider
) -> None:
    step = to_password_step(client)
    Provider.objects.filter(pk=provider.pk).update(registration="closed")

    answer = finish(client, step)

    assert answer.status_code == HTTPStatus.FORBIDDEN
    assert "<h1>Registration is closed</h1>" in html(answer)
    assert "Nothing was created." in html(answer)
    assert not MailAccount.objects.exists()


def test_an_unknown_or_remote_provider_is_404(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(
        hosted=False,
        registration_url="https://remote.example/signup?email={email}",
        suggestion_url="https://remote.example/suggest",
        servers=(),
    )
    assert client.get("/register/nobody/").status_code == HTTPStatus.NOT_FOUND
    assert client.get(START).status_code == HTTPStatus.NOT_FOUND


def test_a_token_provider_asks_for_the_onboarding_token_first(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(registration="token", **TERMS)

    page = client.get(ENTRY)

    assert page.status_code == HTTPStatus.OK
    assert "Invitation needed" in html(page)
    values = form_values(page.content, "/token")
    refused = client.post(START + "token", values | {"token": "not-an-invitation"})
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(refused, "token") == ["This onboarding token is not valid."]
    # Skipping the token step with the page's state does not open the address step.
    skipped = client.post(
        START + "address",
        values | {"local_part": "juliet", "first_name": "J", "domain": "example.org"},
    )
    assert skipped.status_code == HTTPStatus.FORBIDDEN
    assert "<h1>Registration is closed</h1>" in html(skipped)
    assert not MailAccount.objects.exists()


def test_a_token_provider_registers_with_a_valid_token_and_counts_one_use(
    client: Client, make_provider: Callable[..., Provider], make_token: Any
) -> None:
    provider = make_provider(registration="token", **TERMS)
    issued = make_token(domain=provider.domains.get(), max_uses=3)
    values = form_values(client.get(ENTRY).content, "/token")

    address_step = client.post(START + "token", values | {"token": issued.secret})
    assert address_step.status_code == HTTPStatus.OK, html(address_step)
    values = form_values(address_step.content, "/address") | {"local_part": "juliet"}
    answer = finish(client, client.post(START + "address", values))

    assert answer.status_code == HTTPStatus.OK, html(answer)
    assert answer["Content-Type"] == "text/xml; charset=utf-8"
    issued.token.refresh_from_db()
    assert issued.token.use_count == 1
    assert MailAccount.objects.get().onboarding_token_id == issued.token.pk


def test_a_token_of_another_provider_is_refused_saying_so(
    client: Client, make_provider: Callable[..., Provider], make_token: Any
) -> None:
    make_provider(registration="token", **TERMS)
    other = make_provider(domains=("other.example",), slug="other", registration="token")
    foreign = make_token(domain=other.domains.get(), max_uses=3)
    values = form_values(client.get(ENTRY).content, "/token")

    refused = client.post(START + "token", values | {"token": foreign.secret})
    german = client.post(
        START + "token", values | {"token": foreign.secret}, HTTP_ACCEPT_LANGUAGE="de"
    )

    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(refused, "token") == [
        "This onboarding token belongs to another provider: use it on that provider's "
        "registration page."
    ]
    assert errors_of(german, "token") == [
        "Dieser Einladungscode gehört zu einem anderen Anbieter: Verwenden Sie ihn auf "
        "dessen Registrierungsseite."
    ]
    assert "/address" not in html(refused)  # no way on to the address step
    foreign.token.refresh_from_db()
    assert foreign.token.use_count == 0
    assert not MailAccount.objects.exists()


def test_a_token_flow_offers_and_accepts_only_the_tokens_domain(
    client: Client, make_provider: Callable[..., Provider], make_token: Any
) -> None:
    provider = make_provider(domains=("example.org", "example.net"), registration="token", **TERMS)
    issued = make_token(domain=provider.domains.get(name="example.net"), max_uses=3)
    values = form_values(client.get(ENTRY).content, "/token")
    address_step = client.post(START + "token", values | {"token": issued.secret})
    values = form_values(address_step.content, "/address") | {"local_part": "juliet"}

    assert values["domain"] == "example.net"  # the token's, whatever the entry URL said
    elsewhere = client.post(START + "address", values | {"domain": "example.org"})
    answer = finish(client, client.post(START + "address", values))

    assert elsewhere.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(elsewhere, "local_part") == [
        "Choose an address at one of the provider's domains."
    ]
    assert answer.status_code == HTTPStatus.OK
    assert answer["X-Thunderbird-Account-Email"] == "juliet@example.net"
    account = MailAccount.objects.get()
    assert (account.address, account.onboarding_token_id) == (
        "juliet@example.net",
        issued.token.pk,
    )


def test_an_account_awaiting_approval_gets_a_page_not_credentials(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(require_approval=True, **TERMS)

    answer = finish(client, to_password_step(client))

    assert answer.status_code == HTTPStatus.ACCEPTED
    assert answer["Content-Type"].startswith("text/html")
    assert "awaits approval" in html(answer)
    assert PASSWORD not in html(answer)
    assert MailAccount.objects.get().status == AccountStatus.APPROVAL
    closed = client.post(START + "exit", form_values(answer.content, "/exit") | {"action": "close"})
    assert parsed(closed.content).find("error").get("code") == "USER_CANCEL"


@pytest.fixture
def failing_mail_server(settings: Any, tmp_path: Path) -> Iterator[None]:
    """The `command` backend running a program that always fails (the mail server refuses)."""
    script = tmp_path / "refuse.py"
    script.write_text("import sys\nsys.stdin.read()\nsys.exit(1)\n", encoding="utf-8")
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = f"{sys.executable} {script}"
    load_backend.cache_clear()
    yield
    load_backend.cache_clear()


def test_an_internal_failure_answers_the_error_document_and_keeps_nothing(
    client: Client, provider: Provider, failing_mail_server: None
) -> None:
    answer = finish(client, to_password_step(client))

    assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert answer["Content-Type"] == "text/xml; charset=utf-8"
    error = parsed(answer.content).find("error")
    assert error.get("code") == "ERROR"
    assert "nothing was created" in error.text
    assert not MailAccount.objects.exists()


def test_a_provider_without_servers_answers_error_and_creates_nothing(
    client: Client, provider: Provider
) -> None:
    step = to_password_step(client)
    provider.servers.all().delete()

    answer = finish(client, step)

    assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert answer["Content-Type"] == "text/xml; charset=utf-8"
    error = parsed(answer.content).find("error")
    assert error.get("code") == "ERROR"
    assert error.text == (
        "The provider's mail server settings are incomplete; nothing was created."
    )
    assert not MailAccount.objects.exists()


@pytest.mark.parametrize("step", ["entry", "token", "address", "password", "exit"])
def test_the_database_down_answers_the_error_document_and_the_same_registration_works_after(
    make_provider: Callable[..., Provider], database_down: Callable[[], None], step: str
) -> None:
    """RELIABILITY.md check 6 on the pages: 503 ERROR document, not a 500 page."""
    make_provider(**TERMS)
    client = Client(raise_request_exception=False)  # a 500 would be answered, not raised
    page = to_password_step(client)
    values = form_values(page.content, "/password") | {
        "password": PASSWORD,
        "password_again": PASSWORD,
        "accept_terms": "on",
        "token": "x",
        "action": "cancel",
    }
    saved = dict(connection.settings_dict)
    database_down()

    if step == "entry":
        answer = client.get(ENTRY, HTTP_ACCEPT_LANGUAGE="de")
    else:
        answer = client.post(START + step, values, HTTP_ACCEPT_LANGUAGE="de")

    assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert answer["Content-Type"] == "text/xml; charset=utf-8"
    assert "no-store" in answer["Cache-Control"]
    root = parsed(answer.content)
    assert root.find("error").get("code") == "ERROR"
    assert root.findtext("error") == (
        "Die Kontendatenbank ist gerade nicht erreichbar; es wurde nichts angelegt."
    )
    if step in ("token", "address", "password"):  # the signed state names the domain
        assert root.find("emailProvider").get("id") == "example.org"
    connection.close()
    connection.settings_dict.update(saved)
    assert not MailAccount.objects.exists()
    assert finish(client, page).status_code == HTTPStatus.OK
    assert MailAccount.objects.get().address == "juliet@example.org"


@pytest.fixture
def database_lost_after_the_mailbox(settings: Any, tmp_path: Path) -> Iterator[None]:
    """A mail server (the `command` backend) that makes the mailbox, and meanwhile every
    connection of the portal to PostgreSQL is ended, as when the server restarts: the
    account's row is committed, its mailbox made, and marking it ready fails."""
    if connection.vendor != "postgresql":
        pytest.skip("ends PostgreSQL connections")
    dsn = make_conninfo(
        host=connection.settings_dict["HOST"] or None,
        port=connection.settings_dict["PORT"] or None,
        user=connection.settings_dict["USER"] or None,
        password=connection.settings_dict["PASSWORD"] or None,
        dbname=connection.settings_dict["NAME"],
    )
    script = tmp_path / "mail_server.py"
    script.write_text(
        "import json, sys\n"
        "import psycopg\n"
        "request = json.load(sys.stdin)\n"
        "if request['action'] == 'create':\n"
        "    with psycopg.connect(sys.argv[1], autocommit=True) as db:\n"
        "        db.execute('SELECT pg_terminate_backend(pid) FROM pg_stat_activity'\n"
        "                   ' WHERE datname = current_database() AND pid <> pg_backend_pid()')\n"
        "elif request['action'] == 'list':\n"
        "    print(json.dumps({'mailboxes': []}))\n",
        encoding="utf-8",
    )
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = shlex.join([sys.executable, str(script), dsn])
    load_backend.cache_clear()
    yield
    load_backend.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_the_database_lost_during_the_creation_answers_error_and_keeps_no_account(
    make_provider: Callable[..., Provider], database_lost_after_the_mailbox: None, settings: Any
) -> None:
    make_provider(**TERMS)
    client = Client(raise_request_exception=False)

    answer = finish(client, to_password_step(client))
    connection.close()  # the test's connection was ended as well

    assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert answer["Content-Type"] == "text/xml; charset=utf-8"
    root = parsed(answer.content)
    assert root.find("emailProvider").get("id") == "example.org"
    assert root.find("error").get("code") == "ERROR"
    assert "nothing was created" in root.findtext("error")
    # The row the creation left cannot log in, and the reconciler takes it back.
    assert MailAccount.objects.get().mailbox_state == "creating"
    settings.MAILBOX_RECONCILE_GRACE = 0
    reconcile_mailboxes()
    assert not MailAccount.objects.exists()


def test_an_error_report_of_the_password_step_holds_no_password(
    client: Client,
    provider: Provider,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    mailoutbox: list[Any],
) -> None:
    """Django's error mails (text, and HTML with every frame's variables) leave the
    passwords out: the posted fields, and the document that carries the password."""
    settings.ADMINS = [("Operator", "ops@example.org")]
    step = to_password_step(client)
    values = form_values(step.content, "/password") | {
        "password": PASSWORD,
        "password_again": PASSWORD,
        "accept_terms": "on",
    }

    def broken(name: str) -> str:  # a fault after the account and its document exist
        raise RuntimeError("header_name broke")

    monkeypatch.setattr(views_registration, "header_name", broken)
    mailer = AdminEmailHandler(include_html=True)
    logger = logging.getLogger("django.request")
    logger.addHandler(mailer)
    try:
        answer = Client(raise_request_exception=False).post(START + "password", values)
    finally:
        logger.removeHandler(mailer)

    assert answer.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    assert MailAccount.objects.exists()  # the fault came after the account was made
    reports = [message for message in mailoutbox if "header_name broke" in message.body]
    assert reports
    for message in reports:
        report = message.body + "".join(str(content) for content, _ in message.alternatives)
        assert "header_name broke" in report
        assert "password_again" in report  # the field is reported, its value not
        assert PASSWORD not in report


# ----- rate limit ---------------------------------------------------------------------------


def fresh_ipv6() -> str:
    """A client address in a /64 of its own that no earlier run counted (Redis keeps them)."""
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::1"


@pytest.mark.parametrize("step", ["token", "address", "password"])
def test_every_step_counts_against_the_limit_whatever_its_form_carries(
    client: Client, provider: Provider, settings: Any, step: str
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.REGISTRATION_PAGE_RATE = "4/h"
    address = fresh_ipv6()
    page = to_password_step(client, REMOTE_ADDR=address)  # the first attempt
    assert page.status_code == HTTPStatus.OK
    # "Change address" (edit) on every step, with whatever else the step reads.
    values = form_values(page.content, "/address" if step == "address" else "/password") | {
        "edit": "1",
        "token": "x",
        "password": PASSWORD,
        "password_again": PASSWORD,
        "accept_terms": "on",
    }

    answers = [client.post(START + step, values, REMOTE_ADDR=address) for _ in range(4)]

    assert [a.status_code == HTTPStatus.TOO_MANY_REQUESTS for a in answers] == [False] * 3 + [True]
    assert MailAccount.objects.count() == (1 if step == "password" else 0)


def test_attempts_over_the_limit_get_a_friendly_page_with_retry_after(
    client: Client, provider: Provider, settings: Any
) -> None:
    settings.RATELIMIT_ENABLE = True
    settings.REGISTRATION_PAGE_RATE = "3/h"
    address, other_address = fresh_ipv6(), fresh_ipv6()
    page = client.get(ENTRY, REMOTE_ADDR=address)
    values = form_values(page.content, "/address")

    statuses = [
        client.post(START + "address", values, REMOTE_ADDR=address).status_code for _ in range(3)
    ]
    limited = client.post(START + "address", values, REMOTE_ADDR=address)

    assert statuses == [HTTPStatus.OK] * 3
    assert limited.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert 0 < int(limited["Retry-After"]) <= 3600
    assert re.search(r"try again in (a minute|\d+ minutes)\.", html(limited))
    assert "no-store" in limited["Cache-Control"]
    other = client.post(START + "address", values, REMOTE_ADDR=other_address)
    assert other.status_code == HTTPStatus.OK
    # Leaving is never limited.
    assert client.post(START + "exit", {"action": "back"}, REMOTE_ADDR=address).status_code == 200


def test_the_limit_fails_closed_with_a_page_when_the_cache_is_down(
    client: Client, provider: Provider, settings: Any, cache_down: None
) -> None:
    settings.RATELIMIT_ENABLE = True
    step = client.get(ENTRY)
    values = form_values(step.content, "/address")

    answer = client.post(START + "address", values)

    assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert "busy" in html(answer)
    assert int(answer["Retry-After"]) > 0


# ----- raw query values ---------------------------------------------------------------------


def test_the_entry_page_survives_raw_unencoded_names(client: Client, provider: Provider) -> None:
    # What Thunderbird sends: values put in by string replacement, nothing encoded (a
    # browser then encodes only the spaces and non-ASCII bytes; this client sends them raw).
    page = client.get(
        START + "?email=tom+x@example.org&first_name=Tom & Jerry+Co 100%&last_name=Müller-Ünal"
    )

    assert page.status_code == HTTPStatus.OK
    values = form_values(page.content, "/address")
    assert values["first_name"] == "Tom & Jerry+Co 100%"
    assert values["last_name"] == "Müller-Ünal"
    assert values["local_part"] == "tom+x"


# ----- languages ----------------------------------------------------------------------------


def test_the_pages_speak_german_when_the_browser_asks_for_it(
    client: Client, provider: Provider, juliet_taken: None
) -> None:
    page = client.get(ENTRY, HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9,en;q=0.5")
    taken = to_password_step(client, HTTP_ACCEPT_LANGUAGE="de")

    assert '<html lang="de">' in html(page)
    assert "Ihre neue Adresse bei Example Mail" in html(page)
    assert "Abbrechen" in html(page)
    assert errors_of(taken, "local_part") == ["Diese Adresse ist bereits vergeben."]
    english = client.get(ENTRY, HTTP_ACCEPT_LANGUAGE="en-US")
    assert "Your new address at Example Mail" in html(english)


# ----- look and headers ---------------------------------------------------------------------


def test_every_hint_and_error_list_is_tied_to_its_input(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(registration="token", **TERMS)
    token_page = client.get(ENTRY)
    Provider.objects.update(registration="open")
    address_page = client.get(ENTRY)
    refused = client.post(
        START + "address", form_values(address_page.content, "/address") | {"local_part": "ju"}
    )
    password_page = to_password_step(client)
    weak = finish(client, password_page, password="password")

    for page in (token_page, address_page, refused, password_page, weak):
        document = lxml.html.fromstring(page.content)
        described = {
            element_id: element
            for element in document.xpath("//*[@aria-describedby]")
            for element_id in element.get("aria-describedby").split()
        }
        hints = document.find_class("field__hint")
        errors = document.find_class("field__errors")
        assert hints, page.request["PATH_INFO"]
        for hint in hints:  # policies and rules are read with their input
            assert hint.get("id") in described, hint.text_content()
        for error in errors:  # and errors too, on an input marked invalid
            assert described[error.get("id")].get("aria-invalid") == "true"
    rules = lxml.html.fromstring(address_page.content).get_element_by_id("id_local_part")
    assert rules.get("aria-describedby") == "id_local_part-hint"
    policy = lxml.html.fromstring(weak.content).get_element_by_id("id_password")
    assert policy.get("aria-describedby") == "id_password-hint id_password-errors"
    assert policy.get("aria-invalid") == "true"


def test_the_page_carries_the_providers_colours_under_its_csp_nonce(
    client: Client, make_provider: Callable[..., Provider]
) -> None:
    make_provider(accent_color="#FFD700")  # gold: too light for white text and for links

    page = client.get(ENTRY)

    nonce = re.search(r"'nonce-([^']+)'", page["Content-Security-Policy"])
    assert nonce is not None
    style = lxml.html.fromstring(page.content).xpath("//style")[0]
    assert style.get("nonce") == nonce.group(1)
    assert "--accent: #ffd700" in style.text
    assert "--on-accent: #000000" in style.text  # dark text on the light accent
    assert "--accent-text: #ffd700" not in style.text  # links use a darkened shade


def test_the_pages_send_the_security_headers_and_a_httponly_csrf_cookie(
    client: Client, provider: Provider
) -> None:
    page = client.get(ENTRY)

    policy = page["Content-Security-Policy"]
    for directive in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in policy
    assert page["X-Frame-Options"] == "DENY"
    assert page["X-Content-Type-Options"] == "nosniff"
    assert "no-store" in page["Cache-Control"]
    cookie = page.cookies["csrftoken"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert not cookie["domain"]


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def test_the_logo_is_served_with_an_etag_and_a_sandboxing_policy(
    client: Client, provider: Provider
) -> None:
    Provider.objects.filter(pk=provider.pk).update(logo=PNG, logo_type="image/png")

    answer = client.get(START + "logo")
    again = client.get(START + "logo", HTTP_IF_NONE_MATCH=answer["ETag"])

    assert answer.status_code == HTTPStatus.OK
    assert (answer["Content-Type"], answer.content) == ("image/png", PNG)
    assert "sandbox" in answer["Content-Security-Policy"]
    assert again.status_code == HTTPStatus.NOT_MODIFIED
    page = client.get(ENTRY)
    assert (
        lxml.html.fromstring(page.content)
        .xpath('//img[@class="brand__logo"]/@src')[0]
        .startswith(START + "logo?v=")
    )
    Provider.objects.filter(pk=provider.pk).update(logo=b"", logo_type="")
    assert client.get(START + "logo").status_code == HTTPStatus.NOT_FOUND


# ----- RELIABILITY.md check 22: credentials round-trip exactly ------------------------------

# Passwords in the allowed alphabet: printable text with XML's specials, quotes, "]]>",
# non-ASCII and emoji; local parts in the provider's alphabet.
_HOSTILE = st.sampled_from(["&", "<", ">", '"', "'", "]]>", "ü", "ß", "🙂", "€", " ", "%"])
_PASSWORDS = st.lists(
    st.one_of(
        _HOSTILE,
        st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn"), blacklist_characters="\ufeff"),
    ),
    min_size=12,
    max_size=40,
).map("".join)
_LOCAL_PARTS = st.from_regex(r"[a-z][a-z0-9]{2,10}([._-][a-z0-9]{1,8})?", fullmatch=True)


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(local_part=_LOCAL_PARTS, password=_PASSWORDS)
def test_credentials_round_trip_exactly_through_the_clientconfig(
    client: Client, provider: Provider, local_part: str, password: str
) -> None:
    MailAccount.objects.all().delete()
    step = to_password_step(client, local_part)
    if step.status_code != HTTPStatus.OK:  # a reserved name drawn by chance
        assert errors_of(step, "local_part") == ["This name is reserved."]
        assume(False)  # not a pass: Hypothesis fails the test if this is all it draws

    answer = finish(client, step, password=password)

    if answer.status_code == HTTPStatus.BAD_REQUEST:  # the policy (common, similar)
        assert errors_of(answer, "password")
        assert not MailAccount.objects.exists()
        assume(False)
    assert answer.status_code == HTTPStatus.OK
    assert answer["Content-Type"] == "text/xml; charset=utf-8"
    assert "no-store" in answer["Cache-Control"]
    root = DET.fromstring(answer.content)  # defusedxml: no DTD, no entities
    servers = [*root.iter("incomingServer"), *root.iter("outgoingServer")]
    assert [(s.findtext("username"), s.findtext("password")) for s in servers] == [
        (f"{local_part}@example.org", password)
    ] * 2
    account = MailAccount.objects.get()  # and the account takes exactly that password
    assert account.address == f"{local_part}@example.org"
    assert verify_password(password, account.password)


@pytest.mark.parametrize("bad", ["\x00", "\x08", "\x1f", "\r", "\ufffe", "\uffff"])
def test_characters_xml_cannot_carry_are_refused_before_anything_is_created(
    client: Client, provider: Provider, bad: str
) -> None:
    answer = finish(client, to_password_step(client), password=f"Balcony{bad}midnight-42")

    assert answer.status_code == HTTPStatus.BAD_REQUEST
    assert errors_of(answer, "password")
    assert not MailAccount.objects.exists()


@pytest.mark.parametrize(
    ("fields", "heading"),
    [
        ({"registration": "closed"}, "Die Registrierung ist geschlossen"),
        ({"registration": "token"}, "Einladung erforderlich"),
    ],
)
def test_the_entry_states_speak_german(
    client: Client, make_provider: Callable[..., Provider], fields: dict[str, Any], heading: str
) -> None:
    make_provider(**fields)

    page = client.get(ENTRY, HTTP_ACCEPT_LANGUAGE="de")

    assert f"<h1>{heading}</h1>" in html(page)
    assert "Anderen Anbieter oder andere Adresse wählen" in html(page)


def test_the_later_pages_speak_german(
    client: Client, make_provider: Callable[..., Provider], settings: Any
) -> None:
    make_provider(require_approval=True, cancel_answer="page", **TERMS)
    german = {"HTTP_ACCEPT_LANGUAGE": "de"}
    step = to_password_step(client, **german)
    values = form_values(step.content, "/password")

    weak = client.post(
        START + "password", values | {"password": "x", "password_again": "y"}, **german
    )
    forged = client.post(START + "password", values | {"state": "forged"}, **german)
    done = client.post(
        START + "password",
        values | {"password": PASSWORD, "password_again": PASSWORD, "accept_terms": "on"},
        **german,
    )
    goodbye = client.post(START + "exit", {"action": "cancel"}, **german)
    settings.RATELIMIT_ENABLE = True
    settings.REGISTRATION_PAGE_RATE = "0/h"
    limited = client.post(START + "address", values, **german)

    assert "<h1>Passwort wählen</h1>" in html(step)
    assert "Mindestens 8 Zeichen" in html(step)
    assert errors_of(weak, "password_again") == ["Die beiden Passwörter stimmen nicht überein."]
    assert "<h1>Bitte beginnen Sie erneut</h1>" in html(forged)
    assert "<h1>Ihr Konto wartet auf Freigabe</h1>" in html(done)
    assert "<h1>Kein Konto angelegt</h1>" in html(goodbye)
    assert "<h1>Bitte warten Sie etwas</h1>" in html(limited)
