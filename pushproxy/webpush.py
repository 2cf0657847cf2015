"""Web Push message formats: RFC 8291 aes128gcm encryption and RFC 8292 VAPID headers.

Pure: keys and bytes in, bytes and header dicts out. The HTTP exchange itself is made by
portal.netguard (services/delivery.py), never by a Web Push library, so every push goes
through the one outbound guard.
"""

from __future__ import annotations

import base64
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

# RFC 8292 §2: the JWT must not be valid for longer than 24 hours; 12 leaves clock slack.
VAPID_LIFETIME = 12 * 3600


class InvalidKeys(ValueError):
    """A subscription key (p256dh or auth) is not what RFC 8291 requires."""


def b64url_decode(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SubscriptionKeys:
    """The user agent's keys from PushSubscription.getKey(): a P-256 point and 16 bytes."""

    p256dh: bytes
    auth: bytes

    @classmethod
    def parse(cls, p256dh: str, auth: str) -> SubscriptionKeys:
        """From the base64url strings a browser hands out; InvalidKeys if they are unusable."""
        try:
            point = b64url_decode(p256dh)
            secret = b64url_decode(auth)
        except (ValueError, UnicodeError):
            raise InvalidKeys("keys must be base64url") from None
        if len(point) != 65 or point[0] != 4:
            raise InvalidKeys("p256dh must be an uncompressed P-256 point (65 bytes)")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            raise InvalidKeys("p256dh is not a point on P-256") from None
        if len(secret) != 16:
            raise InvalidKeys("auth must be 16 bytes")
        return cls(point, secret)


def encrypt(
    payload: bytes,
    keys: SubscriptionKeys,
    *,
    sender: ec.EllipticCurvePrivateKey | None = None,
    salt: bytes | None = None,
) -> bytes:
    """The aes128gcm body (RFC 8188 header + one record) of `payload` for `keys`.

    A fresh sender key and salt per message unless given (the RFC 8291 example fixes both).
    """
    sender = sender or ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(
        payload,
        salt=salt,
        private_key=sender,
        dh=keys.p256dh,
        auth_secret=keys.auth,
        version="aes128gcm",
    )
    return body


def encrypted_headers(ttl: int) -> dict[str, str]:
    """RFC 8030/8291 request headers of an encrypted push."""
    return {
        "Content-Type": "application/octet-stream",
        "Content-Encoding": "aes128gcm",
        "TTL": str(ttl),
        "Urgency": "high",
    }


# --- VAPID ----------------------------------------------------------------------------------


def load_vapid_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A VAPID signing key from PEM, or from base64url of the raw 32-byte scalar or DER."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    else:
        raw = b64url_decode(text)
        if len(raw) == 32:
            key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
        else:
            key = serialization.load_der_private_key(raw, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("a VAPID key must be a P-256 (prime256v1) private key")
    return key


def generate_vapid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key apps pass to PushManager.subscribe() (base64url, uncompressed point)."""
    return b64url_encode(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


class ExposedKeyFile(ValueError):
    """The VAPID key file may be read by others than its owner."""


def load_or_create_vapid_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key kept in `path`, created (mode 0600) on first use: one-machine deployments.

    ExposedKeyFile if the file is readable or writable by group or others: whoever can
    read it can sign pushes as this server."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = private_key_pem(generate_vapid_key())
        try:
            # Created 0600 from the start: never readable by others, not even empty.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(pem)
    mode = path.stat().st_mode
    if mode & 0o077:
        raise ExposedKeyFile(f"{path} has mode {stat.S_IMODE(mode):04o}; chmod 600 it")
    return load_vapid_key(path.read_text(encoding="ascii"))


def vapid_headers(
    endpoint: str, *, key: ec.EllipticCurvePrivateKey, subject: str, now: float | None = None
) -> dict[str, str]:
    """RFC 8292 `Authorization: vapid t=<JWT>, k=<public key>` for a push to `endpoint`.

    The JWT's audience is the endpoint's origin; it expires VAPID_LIFETIME from `now`.
    """
    issued = time.time() if now is None else now
    claims = {"aud": origin(endpoint), "exp": int(issued + VAPID_LIFETIME), "sub": subject}
    headers: dict[str, str] = Vapid02(key).sign(claims)
    return headers


def origin(url: str) -> str:
    """The URL's origin as RFC 6454 serializes it (the `aud` push services compare): the
    scheme and host in lower case, the port only if it is not the scheme's default, no user
    information, path or query."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""  # lower-cased, without brackets or user information
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or port == {"https": 443, "http": 80}.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
