"""The hosted registration flow's service (providers/services/registration.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core import signing
from django.utils import timezone, translation

from accounts.models import AccountStatus, MailAccount
from accounts.services.accounts import AddressTaken, RegistrationDisabled, create_account
from accounts.services.names import NameRefused
from portal.errors import InvalidInput, PortalError
from providers.models import Provider
from providers.services import registration
from providers.services.registration import Flow, FlowExpired, FlowInvalid

PASSWORD = "Balcony-at-midnight-42"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _english() -> Iterator[None]:
    # A page test before may have left German active in this thread (LocaleMiddleware).
    with translation.override("en"):
        yield


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider(domains=("example.org", "example.net"))


def chosen(provider: Provider, local_part: str = "juliet", **fields: Any) -> Flow:
    flow = Flow(slug=provider.slug, domain="example.org", **fields)
    return registration.choose_address(
        provider=provider,
        flow=flow,
        first_name="Juliet",
        last_name="Capulet",
        local_part=local_part,
        domain="example.org",
    )


def test_a_signed_flow_reads_back_only_for_its_provider(provider: Provider) -> None:
    flow = Flow(slug="example", first_name="Juliet", local_part="juliet", domain="example.org")
    signed = flow.sign()

    assert registration.read_flow(signed, slug="example") == flow
    with pytest.raises(FlowInvalid):
        registration.read_flow(signed, slug="other")


@pytest.mark.parametrize(
    "signed",
    [
        "",
        "garbage",
        signing.dumps(["not", "a", "flow"], salt="providers.services.registration.flow"),
        signing.dumps({"slug": "example"}, salt="providers.services.registration.flow"),
        signing.dumps(  # another purpose's signature (salt) over a flow-shaped value
            {
                "slug": "example",
                "first_name": "",
                "last_name": "",
                "local_part": "x",
                "domain": "example.org",
                "token_id": 1,
            },
            salt="another.purpose",
        ),
    ],
)
def test_anything_but_a_flow_we_signed_is_invalid(signed: str) -> None:
    with pytest.raises(FlowInvalid):
        registration.read_flow(signed, slug="example")


def test_a_flow_expires_after_the_configured_age(settings: Any) -> None:
    signed = Flow(slug="example").sign()
    later = timezone.now() + timedelta(seconds=settings.REGISTRATION_FLOW_MAX_AGE + 5)

    with time_machine.travel(later), pytest.raises(FlowExpired):
        registration.read_flow(signed, slug="example")


@pytest.mark.parametrize(
    ("raw", "local_part", "domain"),
    [
        ("email=juliet@example.net", "juliet", "example.net"),
        ("email=Juliet@EXAMPLE.org", "Juliet", "example.org"),
        ("email=juliet@elsewhere.example", "juliet", "example.org"),
        ("first_name=Juliet", "", "example.org"),
    ],
)
def test_start_flow_prefills_from_the_email_and_a_domain_of_the_provider(
    provider: Provider, raw: str, local_part: str, domain: str
) -> None:
    flow, typed, chosen_domain = registration.start_flow(provider=provider, raw_query=raw)

    assert (typed, chosen_domain, flow.domain) == (local_part, domain, domain)


def test_start_flow_drops_control_characters_from_the_names(provider: Provider) -> None:
    flow, _, _ = registration.start_flow(
        provider=provider, raw_query="first_name=Ju%0Aliet%00&last_name=Cap%1Bulet"
    )

    assert (flow.first_name, flow.last_name) == ("Juliet", "Capulet")


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        # Persian "Mehrnaz": the zero-width non-joiner is part of the spelling.
        (
            "\u0645\u0647\u0631\u200c\u0646\u0627\u0632",
            "\u0645\u0647\u0631\u200c\u0646\u0627\u0632",
        ),
        # A family emoji is joined by zero-width joiners; the variation selector stays.
        (
            "Ana \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f",
            "Ana \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f",
        ),
        # No-break, thin and ideographic spaces and a line separator become plain spaces.
        ("Jean\u00a0Paul\u2009Marie\u3000Anne\u2028Lise", "Jean Paul Marie Anne Lise"),
        ("\u00a0Juliet\u00a0", "Juliet"),
        # Bidi overrides, embeddings, isolates and marks would make the name display as
        # something else; byte-order marks, soft hyphens, private use: gone too.
        ("Juliet\u202egnp.exe", "Julietgnp.exe"),
        ("\u2066Ju\u202aliet\u202c\u2069\u200f\u061c", "Juliet"),
        ("\ufeffJu\u00adli\ue000et", "Juliet"),
    ],
)
def test_start_flow_keeps_the_joiners_of_names_and_turns_spaces_into_spaces(
    provider: Provider, raw: str, name: str
) -> None:
    # Raw UTF-8 on the wire, as a mail client sends it.
    query = b"first_name=" + raw.encode("utf-8") + b"&last_name=Capulet"

    flow, _, _ = registration.start_flow(provider=provider, raw_query=query)

    assert flow.first_name == name
    assert flow.last_name == "Capulet"


def test_choose_address_normalises_and_keeps_the_names(provider: Provider) -> None:
    flow = chosen(provider, "Juliet")

    assert (flow.local_part, flow.domain, flow.full_name) == (
        "juliet",
        "example.org",
        "Juliet Capulet",
    )


def test_choose_address_refuses_taken_invalid_and_foreign_addresses(provider: Provider) -> None:
    create_account(
        domain="example.org", local_part="juliet", password=PASSWORD, created_via="admin"
    )

    with pytest.raises(AddressTaken):
        chosen(provider)
    with pytest.raises(NameRefused):
        chosen(provider, "root")
    with pytest.raises(InvalidInput) as foreign:
        registration.choose_address(
            provider=provider,
            flow=Flow(slug=provider.slug),
            first_name="J",
            last_name="",
            local_part="romeo",
            domain="elsewhere.example",
        )
    assert foreign.value.code == "reg_disabled"


def test_choose_address_needs_the_token_on_a_token_provider(
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider(registration="token")

    with pytest.raises(InvalidInput) as refused:
        chosen(provider)
    assert refused.value.code == "reg_disabled"
    assert chosen(provider, token_id=1).local_part == "juliet"


# ----- onboarding tokens on the token step ----------------------------------------------------


@pytest.fixture
def token_provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider(domains=("example.org",), registration="token")


def test_an_unknown_or_another_providers_token_is_refused_saying_which(
    token_provider: Provider, make_provider: Callable[..., Provider], make_token: Any
) -> None:
    other = make_provider(domains=("other.example",), registration="token")
    foreign = make_token(domain=other.domains.get())
    flow = Flow(slug=token_provider.slug)

    with pytest.raises(registration.InvitationRefused, match="not valid"):
        registration.redeem_invitation(provider=token_provider, flow=flow, token="not-a-token")
    with pytest.raises(registration.InvitationRefused, match="belongs to another provider"):
        registration.redeem_invitation(provider=token_provider, flow=flow, token=foreign.secret)
    foreign.token.refresh_from_db()
    assert foreign.token.use_count == 0


def test_a_token_flow_registers_only_at_the_tokens_domain(
    make_provider: Callable[..., Provider], make_token: Any
) -> None:
    provider = make_provider(domains=("example.org", "example.net"), registration="token")
    issued = make_token(domain=provider.domains.get(name="example.net"))

    flow = registration.redeem_invitation(
        provider=provider, flow=Flow(slug=provider.slug, domain="example.org"),
        token=issued.secret,
    )  # fmt: skip

    assert flow.domain == "example.net"
    with pytest.raises(InvalidInput) as refused:
        registration.choose_address(
            provider=provider, flow=flow, first_name="Juliet", last_name="",
            local_part="juliet", domain="example.org",
        )  # fmt: skip
    assert refused.value.code == "invalid_domain"
    # A state that claims the token for the other domain (only our signature could make
    # one) creates nothing either: the token is looked up for the account's domain.
    forged = replace(flow, local_part="juliet", domain="example.org")
    with pytest.raises(PortalError) as unknown:
        registration.register(provider=provider, flow=forged, password=PASSWORD)
    assert unknown.value.code == "token_unknown"
    assert not MailAccount.objects.exists()
    issued.token.refresh_from_db()
    assert issued.token.use_count == 0
    done = registration.register(
        provider=provider, flow=replace(flow, local_part="juliet"), password=PASSWORD
    )
    assert done.address == "juliet@example.net"


def test_an_accepted_token_is_counted_once_with_the_account_it_makes(
    token_provider: Provider, make_token: Any
) -> None:
    issued = make_token(max_uses=2, account_lifetime=timedelta(days=30))
    flow = registration.redeem_invitation(
        provider=token_provider,
        flow=Flow(slug=token_provider.slug),
        token=f"DCACCOUNT:https://portal.example/dcaccount/{issued.secret}",
    )
    assert flow.token_id == issued.token.pk
    issued.token.refresh_from_db()
    assert issued.token.use_count == 0  # accepting the token counts nothing yet

    done = registration.register(
        provider=token_provider, flow=chosen(token_provider, token_id=flow.token_id),
        password=PASSWORD,
    )  # fmt: skip

    account = MailAccount.objects.get(local_part="juliet")
    issued.token.refresh_from_db()
    assert done.document is not None
    assert issued.token.use_count == 1
    assert account.onboarding_token_id == issued.token.pk
    assert account.expires_at is not None


def test_a_token_used_up_since_the_token_step_creates_nothing(
    token_provider: Provider, make_token: Any
) -> None:
    issued = make_token(max_uses=1)
    flow = registration.redeem_invitation(
        provider=token_provider, flow=Flow(slug=token_provider.slug), token=issued.secret
    )
    registration.register(
        provider=token_provider, flow=chosen(token_provider, "romeo", token_id=flow.token_id),
        password=PASSWORD,
    )  # fmt: skip

    with pytest.raises(PortalError) as refused:
        registration.register(
            provider=token_provider, flow=chosen(token_provider, token_id=flow.token_id),
            password=PASSWORD,
        )  # fmt: skip
    assert refused.value.code == "token_used_up"
    assert not MailAccount.objects.filter(local_part="juliet").exists()
    issued.token.refresh_from_db()
    assert issued.token.use_count == 1


def test_a_used_up_token_is_refused_on_the_token_step_with_its_reason(
    token_provider: Provider, make_token: Any
) -> None:
    issued = make_token(max_uses=1)
    type(issued.token).objects.filter(pk=issued.token.pk).update(use_count=1)

    with pytest.raises(registration.InvitationRefused, match="used up"):
        registration.redeem_invitation(
            provider=token_provider, flow=Flow(slug=token_provider.slug), token=issued.secret
        )


def test_register_creates_the_account_and_its_credentials_document(provider: Provider) -> None:
    done = registration.register(provider=provider, flow=chosen(provider), password=PASSWORD)

    assert (done.address, done.full_name) == ("juliet@example.org", "Juliet Capulet")
    assert done.document is not None and PASSWORD.encode() in done.document
    account = MailAccount.objects.get()
    assert (account.created_via, account.status) == ("hosted", AccountStatus.ACTIVE)


def test_register_without_a_chosen_address_is_invalid(provider: Provider) -> None:
    with pytest.raises(FlowInvalid):
        registration.register(provider=provider, flow=Flow(slug="example"), password=PASSWORD)


def test_register_gives_no_credentials_while_approval_is_pending(
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider(require_approval=True)

    done = registration.register(provider=provider, flow=chosen(provider), password=PASSWORD)

    assert done.document is None
    assert MailAccount.objects.get().status == AccountStatus.APPROVAL


def test_register_on_a_provider_closed_since_creates_nothing(provider: Provider) -> None:
    flow = chosen(provider)
    Provider.objects.filter(pk=provider.pk).update(registration="closed")
    provider.refresh_from_db()

    with pytest.raises(RegistrationDisabled):
        registration.register(provider=provider, flow=flow, password=PASSWORD)
    assert not MailAccount.objects.exists()


def test_register_builds_the_document_first_so_a_broken_provider_creates_nothing(
    provider: Provider,
) -> None:
    flow = chosen(provider)
    provider.servers.all().delete()

    with pytest.raises(registration.ProviderMisconfigured):
        registration.register(provider=provider, flow=flow, password=PASSWORD)
    assert not MailAccount.objects.exists()


def test_alternatives_come_from_the_names_or_else_from_what_was_typed(provider: Provider) -> None:
    create_account(
        domain="example.org", local_part="juliet", password=PASSWORD, created_via="admin"
    )
    named = Flow(slug="example", first_name="Juliet", last_name="Capulet")

    from_names = registration.alternatives(provider=provider, flow=named, typed="juliet")
    from_typed = registration.alternatives(provider=provider, flow=Flow(slug="x"), typed="juliet")

    assert from_names[0] == "juliet.capulet@example.org"
    assert "juliet@example.org" not in from_names + from_typed
    assert from_typed and all(address.startswith("juliet") for address in from_typed)
