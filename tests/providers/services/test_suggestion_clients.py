"""Access tokens of suggestion clients (providers.services.suggestion_clients)."""

from __future__ import annotations

import hashlib
import ipaddress

from providers.models import SuggestionClient
from providers.services import suggestion_clients

ADDRESS = ipaddress.ip_address("192.0.2.10")


def client(network: str = "192.0.2.0/24") -> SuggestionClient:
    row = SuggestionClient(network=network)
    row.full_clean()
    row.save()
    return row


def test_issue_tokens_keeps_only_a_hash_and_the_token_then_admits(db: None) -> None:
    row = client()

    [(issued_for, token)] = suggestion_clients.issue_tokens(client_ids=[row.pk])
    row.refresh_from_db()

    assert issued_for.pk == row.pk
    assert len(token) >= 43  # 32 random bytes, URL-safe
    assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in row.token_sha256
    assert row.admits(ADDRESS, token)
    assert not row.admits(ADDRESS, "")
    assert not row.admits(ADDRESS, token + "x")


def test_issue_tokens_again_stops_the_previous_token_at_once(db: None) -> None:
    row = client()
    [(_, old)] = suggestion_clients.issue_tokens(client_ids=[row.pk])

    [(_, new)] = suggestion_clients.issue_tokens(client_ids=[row.pk])
    row.refresh_from_db()

    assert new != old
    assert not row.admits(ADDRESS, old)
    assert row.admits(ADDRESS, new)


def test_issue_tokens_gives_each_client_its_own(db: None) -> None:
    rows = [client("192.0.2.0/24"), client("198.51.100.0/24")]

    issued = suggestion_clients.issue_tokens(client_ids=[row.pk for row in rows])

    assert len({token for _, token in issued}) == 2
    assert len({row.token_sha256 for row in SuggestionClient.objects.all()}) == 2


def test_remove_tokens_counts_only_clients_that_had_one(db: None) -> None:
    with_token, without = client("192.0.2.0/24"), client("198.51.100.0/24")
    untouched = client("203.0.113.0/24")
    suggestion_clients.issue_tokens(client_ids=[with_token.pk, untouched.pk])

    removed = suggestion_clients.remove_tokens(client_ids=[with_token.pk, without.pk])

    assert removed == 1
    assert SuggestionClient.objects.get(pk=with_token.pk).token_sha256 == ""
    assert SuggestionClient.objects.get(pk=with_token.pk).admits(ADDRESS, "")
    assert SuggestionClient.objects.get(pk=untouched.pk).token_sha256 != ""
