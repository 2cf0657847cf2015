"""The hosted suggestion engine (providers.services.suggest): free, valid, unreserved addresses."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from accounts.models import ReservedName
from accounts.services.accounts import check_address_available, create_account
from portal.errors import InvalidInput
from providers import provisioner
from providers.models import Provider, ProviderDomain
from providers.services.suggest import (
    NameQuery,
    check_name_query,
    hosted_answer,
    suggest_addresses,
)


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider()


def suggest(provider: Provider, first: str, last: str = "", country: str = "") -> list[str]:
    query = check_name_query(first_name=first, last_name=last, country=country)
    return suggest_addresses(provider=provider, query=query)


def assert_registrable(provider: Provider, addresses: list[str]) -> None:
    domain = ProviderDomain.objects.get(provider=provider)
    for address in addresses:
        local, _at, name = address.rpartition("@")
        assert name == domain.name
        # What registration itself would accept: valid, not reserved, not taken.
        assert check_address_available(domain, local) == local


def test_suggestions_follow_the_documented_order(provider: Provider) -> None:
    assert suggest(provider, "Juliet", "Capulet") == [
        "juliet.capulet@example.org",
        "julietcapulet@example.org",
        "j.capulet@example.org",
        "juliet.c@example.org",
        "juliet_capulet@example.org",
    ]


def test_suggestions_continue_with_short_numbers_up_to_the_configured_count(
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider(suggestion_count=9)

    assert suggest(provider, "Juliet", "Capulet")[5:] == [
        "capulet.juliet@example.org",
        "juliet.capulet1@example.org",
        "julietcapulet1@example.org",
        "j.capulet1@example.org",
    ]


def test_suggestions_never_include_taken_addresses(provider: Provider) -> None:
    for local in ("juliet.capulet", "julietcapulet", "j.capulet"):
        create_account(
            domain="example.org",
            local_part=local,
            password="nurse-and-friar-7",
            created_via="admin",
        )

    suggested = suggest(provider, "Juliet", "Capulet")

    assert suggested[0] == "juliet.c@example.org"
    assert not {"juliet.capulet", "julietcapulet", "j.capulet"} & {
        address.split("@")[0] for address in suggested
    }
    assert_registrable(provider, suggested)


def test_suggestions_never_include_reserved_names(provider: Provider) -> None:
    ReservedName.objects.create(name="romeo.montague")

    post = suggest(provider, "Post", "Master")
    romeo = suggest(provider, "Romeo", "Montague")

    # "postmaster" is built in, and stays reserved with punctuation: post.master, post_master.
    assert not {"post.master", "postmaster", "post_master"} & {a.split("@")[0] for a in post}
    assert "romeo.montague@example.org" not in romeo
    assert_registrable(provider, post + romeo)


def test_suggestions_respect_the_providers_punctuation_rules(
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider(username_punctuation="")

    suggested = suggest(provider, "Juliet", "Capulet")

    # Only firstlast survives of the six patterns; then it gets numbers.
    assert suggested[:3] == [
        "julietcapulet@example.org",
        "julietcapulet1@example.org",
        "julietcapulet2@example.org",
    ]
    assert all("." not in a.split("@")[0] and "_" not in a for a in suggested)
    assert_registrable(provider, suggested)


@pytest.mark.parametrize(
    ("first", "last", "country", "expected_first"),
    [
        ("José", "Müller", "", "jose.muller"),
        ("José", "Müller", "DE", "jose.mueller"),
        ("Zoë", "O'Brien", "", "zoe.obrien"),
        ("Владимир", "Петров", "", "vladimir.petrov"),
        ("Григорій", "Сковорода", "UA", "hryhorii.skovoroda"),
        ("李", "小龍", "", "li.xiaolong"),
        ("Søren", "Kierkegaard", "DK", "soeren.kierkegaard"),
        ("Zoë", "", "", "zoe"),
        ("", "Capulet", "", "capulet"),
        ("Mary Ann", "van der Berg", "", "maryann.vanderberg"),
    ],
)
def test_names_in_any_script_give_valid_addresses(
    provider: Provider, first: str, last: str, country: str, expected_first: str
) -> None:
    suggested = suggest(provider, first, last, country)

    assert suggested[0] == f"{expected_first}@example.org"
    assert len(suggested) == 5
    assert all(address.isascii() for address in suggested)
    assert_registrable(provider, suggested)


def test_a_name_of_symbols_only_gives_no_addresses_and_a_declined_answer(
    provider: Provider,
) -> None:
    query = check_name_query(first_name="😀", last_name="★")

    assert suggest_addresses(provider=provider, query=query) == []
    answer = hosted_answer(provider=provider, query=query)
    assert answer.status == provisioner.DECLINED  # as a remote provider's succeeded: false
    assert answer.entry()["succeeded"] is False


@pytest.mark.parametrize(("first", "last"), [("A" * 150, "B" * 150), ("A" * 150, "")])
def test_a_long_name_gives_the_configured_count_of_addresses_no_longer_than_allowed(
    provider: Provider, first: str, last: str
) -> None:
    suggested = suggest(provider, first, last)

    assert len(suggested) == provider.effective_suggestion_count == 5
    assert all(len(address.split("@")[0]) <= 32 for address in suggested)
    assert_registrable(provider, suggested)


@pytest.mark.parametrize(
    ("first", "last"),
    [
        ("محمد\u200cرضا", "رضایی"),  # noqa: RUF001 (Persian letters; a ZWNJ inside)
        ("Jean\u00a0Pierre", "Dupont"),  # a no-break space between two given names
    ],
)
def test_names_written_with_joiners_and_no_break_spaces_are_accepted(
    provider: Provider, first: str, last: str
) -> None:
    query = check_name_query(first_name=first, last_name=last)
    suggested = suggest_addresses(provider=provider, query=query)

    assert query.first_name == first
    assert len(suggested) == 5
    assert all(address.isascii() for address in suggested)
    assert_registrable(provider, suggested)


def test_check_name_query_puts_names_in_nfc() -> None:
    decomposed = "Zoe\u0308"  # e + combining diaeresis

    assert check_name_query(first_name=decomposed, last_name="").first_name == "Zoë"


@pytest.mark.parametrize(
    "registration_fields",
    [{"registration": "closed"}, {"registration": "token"}, {"tos_url": ""}],
)
def test_hosted_answer_declines_for_a_provider_clients_are_not_offered(
    make_provider: Callable[..., Provider], registration_fields: dict[str, str]
) -> None:
    fields = {
        "tos_url": "https://example.org/tos",
        "privacy_url": "https://example.org/privacy",
        **registration_fields,
    }
    provider = make_provider(**fields)
    query = check_name_query(first_name="Juliet", last_name="Capulet")

    answer = hosted_answer(provider=provider, query=query)

    assert answer.status == provisioner.DECLINED
    assert answer.addresses == ()


def test_short_names_reach_the_shortest_length_with_numbers(provider: Provider) -> None:
    # "Li" alone is too short for the default 3 characters; "li1" is not.
    assert suggest(provider, "Li")[:2] == ["li1@example.org", "li2@example.org"]


@pytest.mark.parametrize(
    ("first", "last", "country", "code"),
    [
        ("", "", "", "name_missing"),
        ("   ", "", "", "name_missing"),
        ("x" * 500, "", "", "name_too_long"),
        ("Juliet", "x" * 201, "", "name_too_long"),
        ("Juli\x07et", "", "", "invalid_name"),
        ("Juliet", "Cap\nulet", "", "invalid_name"),
        ("Juli\udc80et", "", "", "invalid_name"),  # a lone surrogate is not text
        ("Juli\uffffet", "", "", "invalid_name"),  # a noncharacter, which XML cannot carry
        ("Juliet", "", "Germany", "invalid_country"),
        ("Juliet", "", "D1", "invalid_country"),
    ],
)
def test_check_name_query_refuses_with_a_clear_code(
    first: str, last: str, country: str, code: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_name_query(first_name=first, last_name=last, country=country)
    assert refused.value.code == code


def test_check_name_query_trims_and_upper_cases_the_country() -> None:
    assert check_name_query(first_name=" Zoë ", last_name="", country="de ") == NameQuery(
        "Zoë", "", "DE"
    )


def test_hosted_answer_costs_two_queries_for_a_prefetched_provider(
    make_provider: Callable[..., Provider], django_assert_num_queries: Any
) -> None:
    make_provider(tos_url="https://example.org/tos", privacy_url="https://example.org/privacy")
    provider = Provider.objects.prefetch_related("domains").get()
    query = check_name_query(first_name="Juliet", last_name="Capulet")

    # reserved names, taken addresses (one batch), and nothing per candidate or for the id
    with django_assert_num_queries(2):
        answer = hosted_answer(provider=provider, query=query)

    assert answer.provider == "example.org"
    assert len(answer.addresses) == 5


def test_suggestions_read_the_reserved_names_once_however_many_batches(
    make_provider: Callable[..., Provider], django_assert_num_queries: Any
) -> None:
    from providers import localparts
    from providers.services import suggest as service

    make_provider()
    provider = Provider.objects.prefetch_related("domains").get()
    # Administrators reserved every candidate of the first batch: a second batch follows.
    first_batch = itertools.islice(localparts.candidates("Juliet", "Capulet"), service.BATCH)
    ReservedName.objects.bulk_create(ReservedName(name=name) for name in first_batch)
    query = check_name_query(first_name="Juliet", last_name="Capulet")

    # The reserved names once, the taken addresses of the second batch (the first has no
    # candidate left to look up): 2, where reading the reserved names per batch made 3.
    with django_assert_num_queries(2):
        suggested = suggest_addresses(provider=provider, query=query)

    assert len(suggested) == 5
    assert_registrable(provider, suggested)
