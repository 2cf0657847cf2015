"""pushproxy.webpush against RFC 8291's example and an independent user agent."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pushproxy import webpush
from tests.fakes.user_agent import UserAgent, b64d, verify_vapid

# RFC 8291 §5 "Push Message Encryption Example" (Appendix A has the intermediate values).
RFC_PLAINTEXT = b"When I grow up, I want to be a watermelon"
RFC_AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
RFC_UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
RFC_UA_PUBLIC = (
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
)
RFC_AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
RFC_SALT = "DGv6ra1nlYgDCS1FRnbzlw"
RFC_BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml"
    "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT"
    "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)


def _private(b64: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(b64d(b64), "big"), ec.SECP256R1())


def test_encrypt_reproduces_the_rfc_8291_example_byte_for_byte() -> None:
    keys = webpush.SubscriptionKeys.parse(RFC_UA_PUBLIC, RFC_AUTH)

    body = webpush.encrypt(
        RFC_PLAINTEXT, keys, sender=_private(RFC_AS_PRIVATE), salt=b64d(RFC_SALT)
    )

    assert body == b64d(RFC_BODY)


def test_the_rfc_user_agent_decrypts_the_example() -> None:
    agent = UserAgent(private=_private(RFC_UA_PRIVATE), auth=b64d(RFC_AUTH))
    assert agent.decrypt(b64d(RFC_BODY)) == RFC_PLAINTEXT


def test_a_fresh_message_decrypts_for_its_user_agent_only() -> None:
    agent, stranger = UserAgent(), UserAgent()
    keys = webpush.SubscriptionKeys.parse(**agent.keys())
    message = json.dumps({"type": "newMail", "exists": 3}).encode()

    body = webpush.encrypt(message, keys)

    assert agent.decrypt(body) == message
    assert body != webpush.encrypt(message, keys)  # a new key and salt every time
    with pytest.raises(Exception):  # noqa: B017 - any failure: the tag does not verify
        stranger.decrypt(body)


@pytest.mark.parametrize(
    ("p256dh", "auth"),
    [
        ("not base64 !", RFC_AUTH),
        (RFC_UA_PUBLIC[:40], RFC_AUTH),
        ("B" + "A" * 86, RFC_AUTH),  # 65 bytes but not a point on the curve
        (RFC_UA_PUBLIC, "c2hvcnQ"),
    ],
)
def test_unusable_subscription_keys_are_refused(p256dh: str, auth: str) -> None:
    with pytest.raises(webpush.InvalidKeys):
        webpush.SubscriptionKeys.parse(p256dh, auth)


def test_vapid_headers_verify_with_the_public_key_for_the_endpoint_origin() -> None:
    key = webpush.generate_vapid_key()
    endpoint = "https://push.example.net:8443/wpush/v2/abc"

    headers = webpush.vapid_headers(endpoint, key=key, subject="mailto:ops@example.org")

    claims = verify_vapid(headers["Authorization"], endpoint)
    assert claims["sub"] == "mailto:ops@example.org"
    assert claims["exp"] <= time.time() + webpush.VAPID_LIFETIME + 1
    assert headers["Authorization"].endswith("k=" + webpush.application_server_key(key))


@pytest.mark.parametrize(
    ("endpoint", "audience"),
    [
        ("https://Push.Example.NET/wpush/v2/abc", "https://push.example.net"),
        ("https://push.example.net:443/wpush/v2/abc?x=1", "https://push.example.net"),
        ("https://push.example.net:8443/w", "https://push.example.net:8443"),
        ("http://127.0.0.1:80/w", "http://127.0.0.1"),
        ("https://user@PUSH.example.net:4430/w", "https://push.example.net:4430"),
    ],
)
def test_the_vapid_audience_is_the_endpoints_origin(endpoint: str, audience: str) -> None:
    key = webpush.generate_vapid_key()
    headers = webpush.vapid_headers(endpoint, key=key, subject="mailto:ops@example.org")
    token = headers["Authorization"].split("t=", 1)[1].split(",", 1)[0]
    assert json.loads(b64d(token.split(".")[1]))["aud"] == audience


def test_a_vapid_key_file_others_may_read_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "vapid.pem"
    path.write_text(webpush.private_key_pem(webpush.generate_vapid_key()), encoding="ascii")
    path.chmod(0o644)
    with pytest.raises(webpush.ExposedKeyFile):
        webpush.load_or_create_vapid_key(path)
    path.chmod(0o600)
    assert webpush.load_or_create_vapid_key(path) is not None


def test_vapid_keys_load_from_pem_raw_and_file(tmp_path: object) -> None:
    key = webpush.generate_vapid_key()
    raw = webpush.b64url_encode(key.private_numbers().private_value.to_bytes(32, "big"))
    for text in (webpush.private_key_pem(key), raw):
        loaded = webpush.load_vapid_key(text)
        assert webpush.application_server_key(loaded) == webpush.application_server_key(key)
    path = tmp_path / "vapid.pem"  # type: ignore[operator]
    first = webpush.load_or_create_vapid_key(path)
    again = webpush.load_or_create_vapid_key(path)
    assert webpush.application_server_key(first) == webpush.application_server_key(again)
    assert path.stat().st_mode & 0o077 == 0
