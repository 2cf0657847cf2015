"""Access tokens of suggestion clients: issued once, kept only as SHA-256."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence

from django.db import transaction

from providers.models import SuggestionClient

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits from `secrets`


def issue_tokens(*, client_ids: Sequence[int]) -> list[tuple[SuggestionClient, str]]:
    """Give each suggestion client a new random token; returns (client, token) pairs.

    The tokens exist in clear only in the return value: each row stores the SHA-256. A
    client's previous token stops working at once. Side effects: token_sha256 of each row.
    """
    issued = []
    with transaction.atomic():
        clients = list(
            SuggestionClient.objects.select_for_update(of=("self",))
            .select_related("provider")
            .filter(pk__in=client_ids)
            .order_by("network")
        )
        for client in clients:
            token = secrets.token_urlsafe(TOKEN_BYTES)
            client.token_sha256 = hashlib.sha256(token.encode()).hexdigest()
            issued.append((client, token))
        SuggestionClient.objects.bulk_update(clients, ["token_sha256"])
    logger.info("suggestion client tokens issued for %s", [c.network for c, _ in issued])
    return issued


def remove_tokens(*, client_ids: Sequence[int]) -> int:
    """Stop asking these clients for a token; returns how many had one."""
    return (
        SuggestionClient.objects.filter(pk__in=client_ids)
        .exclude(token_sha256="")
        .update(token_sha256="")
    )
