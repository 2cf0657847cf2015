"""The device side of Web Push, written from the RFCs with `cryptography` alone (not with
the library the portal sends with): RFC 8291 decryption and RFC 8292 VAPID verification."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _hkdf(length: int, salt: bytes, info: bytes, ikm: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


class UserAgent:
    """A browser's push subscription: its P-256 key pair and 16-byte auth secret."""

    def __init__(
        self, private: ec.EllipticCurvePrivateKey | None = None, auth: bytes | None = None
    ):
        self.private = private or ec.generate_private_key(ec.SECP256R1())
        self.auth = auth or os.urandom(16)
        self.public = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def keys(self) -> dict[str, str]:
        return {"p256dh": b64e(self.public), "auth": b64e(self.auth)}

    def decrypt(self, body: bytes) -> bytes:
        """RFC 8291 §3.4 and RFC 8188 §2: one aes128gcm record."""
        salt, record_size, id_length = body[:16], int.from_bytes(body[16:20], "big"), body[20]
        sender = body[21 : 21 + id_length]
        ciphertext = body[21 + id_length :]
        assert len(ciphertext) <= record_size
        shared = self.private.exchange(
            ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender)
        )
        ikm = _hkdf(32, self.auth, b"WebPush: info\x00" + self.public + sender, shared)
        key = _hkdf(16, salt, b"Content-Encoding: aes128gcm\x00", ikm)
        nonce = _hkdf(12, salt, b"Content-Encoding: nonce\x00", ikm)
        padded = AESGCM(key).decrypt(nonce, ciphertext, None).rstrip(b"\x00")
        assert padded.endswith(b"\x02"), "the last record ends with the 0x02 delimiter"
        return padded[:-1]


def verify_vapid(authorization: str, endpoint: str) -> dict[str, Any]:
    """RFC 8292: `vapid t=<JWT>, k=<key>`; checks the ES256 signature with k, the audience
    (the endpoint's origin) and the expiry (future, at most 24 h). Returns the claims."""
    scheme, _, params = authorization.partition(" ")
    assert scheme.lower() == "vapid", authorization
    fields = dict(part.strip().split("=", 1) for part in params.split(","))
    header_b64, claims_b64, signature_b64 = fields["t"].split(".")
    header = json.loads(b64d(header_b64))
    assert header == {"typ": "JWT", "alg": "ES256"}
    signature = b64d(signature_b64)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(fields["k"]))
    public.verify(
        encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        ),
        f"{header_b64}.{claims_b64}".encode("ascii"),
        ec.ECDSA(hashes.SHA256()),
    )
    claims: dict[str, Any] = json.loads(b64d(claims_b64))
    # RFC 6454 origin: lower case, no default port (written out here, not imported).
    parts = urlsplit(endpoint)
    netloc = parts.netloc.lower()
    for default in (":443",) if parts.scheme == "https" else (":80",):
        netloc = netloc.removesuffix(default)
    assert claims["aud"] == f"{parts.scheme.lower()}://{netloc}", claims["aud"]
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    assert claims["sub"].startswith(("mailto:", "https://"))
    return claims
