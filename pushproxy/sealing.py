"""Seal and unseal an IMAP password for its trip through the broker to the owning monitor.

The password crosses Redis only inside a seal: AES-256-GCM under a key derived (HKDF-SHA256)
from PUSHPROXY_SEAL_KEY, or from SECRET_KEY when that is unset, with

- an expiry about 30 s ahead, inside the authenticated plaintext, so a message that sat in
  a queue (or was copied out of one) is useless soon after;
- associated data naming the subscription and the monitor queue it was sealed for, so a
  seal cannot be replayed for another subscription or read by another purpose.

`Secret` wraps a clear-text password on its short way (request -> seal, unseal -> login) so
that a traceback, a log line or a repr shows `Secret('***')`, never the value.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

VERSION: Final = b"\x01"
DEFAULT_TTL: Final = 30.0
_NONCE_BYTES: Final = 12


class Secret:
    """A clear-text secret that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not pickled; seal it")


class SealError(Exception):
    """The seal is malformed, was made for something else, was tampered with, or expired."""

    def __init__(self, reason: str) -> None:
        self.reason = reason  # malformed, invalid, expired
        super().__init__(f"sealed credentials {reason}")


def _key() -> bytes:
    material = settings.PUSHPROXY_SEAL_KEY or settings.SECRET_KEY
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"mailportal pushproxy seal v1",
        info=b"" if settings.PUSHPROXY_SEAL_KEY else b"derived from SECRET_KEY",
    )
    return hkdf.derive(material.encode("utf-8"))


def seal(
    *,
    username: str,
    password: Secret,
    context: str,
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """The credentials encrypted for `context` ("<subscription>|<generation>|<queue>"),
    valid for `ttl` seconds. The user name rides along so that privacy mode keeps it out
    of the broker too."""
    issued = time.time() if now is None else now
    payload = {"u": username, "p": password.reveal(), "exp": issued + ttl}
    plaintext = json.dumps(payload).encode("utf-8")
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(_key()).encrypt(nonce, plaintext, VERSION + context.encode("utf-8"))
    return base64.urlsafe_b64encode(VERSION + nonce + sealed).decode("ascii")


def unseal(token: str, *, context: str, now: float | None = None) -> tuple[str, Secret]:
    """(username, password) sealed by `seal` for this `context`; SealError otherwise or
    once expired."""
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (ValueError, UnicodeError):
        raise SealError("malformed") from None
    if len(raw) < 1 + _NONCE_BYTES + 16 or raw[:1] != VERSION:
        raise SealError("malformed")
    nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
    try:
        plaintext = AESGCM(_key()).decrypt(nonce, sealed, VERSION + context.encode("utf-8"))
    except InvalidTag:
        raise SealError("invalid") from None
    payload = json.loads(plaintext)
    if (time.time() if now is None else now) > float(payload["exp"]):
        raise SealError("expired")
    return str(payload["u"]), Secret(str(payload["p"]))
