"""pushproxy.sealing: the password crosses the broker only sealed, for ~30 s, for one purpose."""

from __future__ import annotations

import base64
import pickle
import time
from typing import Any

import pytest

from pushproxy import sealing
from pushproxy.sealing import Secret

CANARY = "canary-Zq8-sealed-pw"


def test_seal_round_trips_username_and_password() -> None:
    token = sealing.seal(username="juliet@example.org", password=Secret(CANARY), context="ps_1|1|q")

    username, password = sealing.unseal(token, context="ps_1|1|q")

    assert (username, password.reveal()) == ("juliet@example.org", CANARY)


def test_the_seal_shows_neither_password_nor_username() -> None:
    token = sealing.seal(username="juliet@example.org", password=Secret(CANARY), context="c")
    raw = base64.urlsafe_b64decode(token)
    for needle in (CANARY, "juliet"):
        assert needle not in token
        assert needle.encode() not in raw
        assert base64.b64encode(needle.encode()).decode() not in token


def test_a_seal_expires() -> None:
    token = sealing.seal(username="u", password=Secret(CANARY), context="c", now=time.time() - 31)
    with pytest.raises(sealing.SealError) as caught:
        sealing.unseal(token, context="c")
    assert caught.value.reason == "expired"


@pytest.mark.parametrize("context", ["ps_2|1|q", "ps_1|2|q", "ps_1|1|other"])
def test_a_seal_opens_only_for_its_own_context(context: str) -> None:
    token = sealing.seal(username="u", password=Secret(CANARY), context="ps_1|1|q")
    with pytest.raises(sealing.SealError) as caught:
        sealing.unseal(token, context=context)
    assert caught.value.reason == "invalid"


def test_a_tampered_seal_is_refused() -> None:
    token = bytearray(
        base64.urlsafe_b64decode(sealing.seal(username="u", password=Secret(CANARY), context="c"))
    )
    token[-1] ^= 1
    with pytest.raises(sealing.SealError):
        sealing.unseal(base64.urlsafe_b64encode(bytes(token)).decode(), context="c")
    with pytest.raises(sealing.SealError):
        sealing.unseal("not base64 !!", context="c")


def test_another_key_cannot_open_it(settings: Any) -> None:
    token = sealing.seal(username="u", password=Secret(CANARY), context="c")
    settings.PUSHPROXY_SEAL_KEY = "a-different-seal-key"
    with pytest.raises(sealing.SealError):
        sealing.unseal(token, context="c")


def test_a_secret_never_prints_or_pickles_itself() -> None:
    secret = Secret(CANARY)
    assert CANARY not in repr(secret)
    assert CANARY not in str(secret)
    assert CANARY not in f"{secret!r} {secret}"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
