"""Issuing, revoking and redeeming onboarding tokens (providers/services/onboarding.py)."""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import MailAccount
from portal.errors import InvalidInput
from providers.models import OnboardingToken, Provider, TokenState, token_digest
from providers.services import onboarding

pytestmark = pytest.mark.django_db

URLSAFE = string.ascii_letters + string.digits + "-_"


def test_secrets_carry_at_least_128_bits_and_only_their_digest_is_stored(
    make_token: Callable[..., Any],
) -> None:
    issued = make_token()
    others = {onboarding.new_secret() for _ in range(200)}

    assert set(issued.secret) <= set(URLSAFE)
    assert len(issued.secret) * math.log2(len(URLSAFE)) >= 128
    assert len(others) == 200  # no repeats
    row = OnboardingToken.objects.values().get(pk=issued.token.pk)
    assert row["token_sha256"] == token_digest(issued.secret)
    assert all(issued.secret not in str(value) for value in row.values())


def test_issue_refuses_a_provider_that_approves_accounts_by_hand(
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider(require_approval=True)

    with pytest.raises(InvalidInput, match="approves each new account"):
        onboarding.issue_token(
            token=OnboardingToken(name="x", domain=provider.domains.get(), max_uses=1),
            valid_for=None,
        )
    assert not OnboardingToken.objects.exists()


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        (".tmp", "not first"),
        ("a..b", "not twice"),
        ("Tmp+", "Use lower-case"),
        ("a" * 30, "allows 3 to 32"),
    ],
)
def test_issue_refuses_prefixes_the_provider_would_refuse(
    make_provider: Callable[..., Provider], prefix: str, message: str
) -> None:
    domain = make_provider().domains.get()

    with pytest.raises(InvalidInput, match=message):
        onboarding.issue_token(
            token=OnboardingToken(name="x", domain=domain, max_uses=1, prefix=prefix),
            valid_for=None,
        )


def test_issue_refuses_punctuation_the_provider_does_not_allow(
    make_provider: Callable[..., Provider],
) -> None:
    domain = make_provider(username_punctuation="").domains.get()

    with pytest.raises(InvalidInput, match="does not allow"):
        onboarding.issue_token(
            token=OnboardingToken(name="x", domain=domain, max_uses=1, prefix="tmp."),
            valid_for=None,
        )


def test_token_state_names_what_stands_in_the_way(make_token: Callable[..., Any]) -> None:
    token = make_token(max_uses=2).token
    now = timezone.now()

    assert token.state(now) == TokenState.USABLE and token.is_usable(now)
    assert token.state(now + timedelta(days=8)) == TokenState.EXPIRED
    token.use_count = 2
    assert token.state(now) == TokenState.USED_UP
    token.revoked_at = now
    assert token.state(now + timedelta(days=8)) == TokenState.REVOKED


def test_the_database_refuses_more_uses_than_allowed(make_token: Callable[..., Any]) -> None:
    token = make_token(max_uses=2).token

    with pytest.raises(IntegrityError), transaction.atomic():
        OnboardingToken.objects.filter(pk=token.pk).update(use_count=3)


def test_max_uses_cannot_drop_below_the_uses_made(make_token: Callable[..., Any]) -> None:
    token = make_token(max_uses=3).token
    OnboardingToken.objects.filter(pk=token.pk).update(use_count=2)
    token.refresh_from_db()
    token.max_uses = 1

    with pytest.raises(Exception, match="used 2 times"):
        token.full_clean()


def test_revoke_twice_reports_the_second_as_done_already(make_token: Callable[..., Any]) -> None:
    issued = make_token()

    assert onboarding.revoke_token(token=issued.token) is True
    assert onboarding.revoke_token(token=issued.token) is False
    with pytest.raises(onboarding.TokenRevoked):
        onboarding.redeem_token(secret=issued.secret)


def test_a_new_secret_retires_the_old_code_and_keeps_the_uses(
    make_token: Callable[..., Any],
) -> None:
    issued = make_token(max_uses=3)
    onboarding.redeem_token(secret=issued.secret)

    renewed = onboarding.replace_secret(token=issued.token)

    with pytest.raises(onboarding.TokenUnknown):
        onboarding.redeem_token(secret=issued.secret)
    onboarding.redeem_token(secret=renewed.secret)
    issued.token.refresh_from_db()
    assert issued.token.use_count == 2 == MailAccount.objects.count()


@pytest.mark.parametrize(
    "form",
    [
        "{secret}",
        "DCACCOUNT:https://portal.example.org/dcaccount/{secret}",
        "https://portal.example.org/new_email?t={secret}",
    ],
)
def test_secret_from_code_reads_every_form_of_the_code(
    make_token: Callable[..., Any], form: str
) -> None:
    issued = make_token()

    assert onboarding.secret_from_code(token=issued.token, code=form.format(secret=issued.secret))
    with pytest.raises(InvalidInput):
        onboarding.secret_from_code(token=issued.token, code=form.format(secret="wrong"))


def test_redeemed_addresses_are_the_prefix_and_random_characters(
    make_token: Callable[..., Any],
) -> None:
    issued = make_token(max_uses=2, prefix="x")
    first = onboarding.redeem_token(secret=issued.secret)
    second = onboarding.redeem_token(secret=issued.secret)

    assert first.address != second.address
    assert first.address.startswith("x") and len(first.address.split("@")[0]) == 11
    assert set(first.address.split("@")[0][1:]) <= set(onboarding.LOCAL_PART_ALPHABET)


def test_token_card_is_written_in_the_providers_language(
    make_provider: Callable[..., Provider], make_token: Callable[..., Any], settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "https://portal.example.org"
    domain = make_provider(languages="de,en").domains.get()
    issued = make_token(domain=domain)

    card = onboarding.token_card(issued)

    assert card.qr_text == f"DCACCOUNT:https://portal.example.org/dcaccount/{issued.secret}"
    assert card.title == "Ihre neue Adresse bei example.org"
    assert card.instructions[0].startswith("1. Installieren")


def test_token_card_is_refused_for_an_http_portal(
    make_token: Callable[..., Any], settings: Any
) -> None:
    settings.PORTAL_BASE_URL = "http://127.0.0.1:8000"
    issued = make_token()

    with pytest.raises(ValueError, match="https PORTAL_BASE_URL"):
        onboarding.token_card(issued)
    assert issued.url == f"http://127.0.0.1:8000/dcaccount/{issued.secret}"
