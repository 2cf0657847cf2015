"""Mailbox password hashes: argon2id that Django and Dovecot verify, no truncation."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from django.contrib.auth.hashers import check_password

from accounts import passwords

LONG = "x" * 69 + "A" + "y" * 10  # 80 characters
NON_ASCII = "pässwörd-ünïcødé-🙂-long enough"


def test_hash_is_argon2id_with_stated_parameters() -> None:
    encoded = passwords.hash_password("balcony-at-midnight")

    assert encoded.startswith("argon2$argon2id$v=19$m=19456,t=2,p=1$")


@pytest.mark.parametrize("password", ["balcony-at-midnight", "k" * 64, NON_ASCII, LONG])
def test_hash_verifies_exactly_the_password(password: str) -> None:
    encoded = passwords.hash_password(password)

    assert passwords.verify_password(password, encoded)
    assert not passwords.verify_password(password[:-1], encoded)


def test_password_differing_at_character_70_fails() -> None:
    # bcrypt would ignore everything past 72 bytes (RELIABILITY.md check 16).
    encoded = passwords.hash_password(LONG)

    assert not passwords.verify_password(LONG[:69] + "B" + LONG[70:], encoded)


def test_django_verifies_the_same_hash(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher"]
    encoded = passwords.hash_password(NON_ASCII)

    assert check_password(NON_ASCII, encoded)


def test_dovecot_form_swaps_the_prefix_for_the_scheme() -> None:
    encoded = passwords.hash_password("balcony-at-midnight")

    assert passwords.dovecot_form(encoded) == "{ARGON2ID}" + encoded[len("argon2") :]
    with pytest.raises(ValueError, match="not an argon2id hash"):
        passwords.dovecot_form("pbkdf2_sha256$1$x$y")


def test_verify_refuses_foreign_hash_formats() -> None:
    assert not passwords.verify_password("x", "md5$$9dd4e461268c8034f5c8564e155c67a6")


def test_needs_rehash_after_parameter_change() -> None:
    current = passwords.hash_password("balcony-at-midnight")
    older = current.replace("m=19456,t=2", "m=19456,t=1")

    assert not passwords.needs_rehash(current)
    assert passwords.needs_rehash(older)


@pytest.mark.parametrize("password", ["balcony-at-midnight", NON_ASCII, LONG])
def test_dovecot_verifier_accepts_the_hash(password: str) -> None:
    # The mail server's own verifier (RELIABILITY.md check 27, mail-server half).
    doveadm = shutil.which("doveadm")
    if doveadm is None:
        pytest.fail("doveadm is required (Debian dovecot-core, installed by .ci/run)")
    encoded = passwords.dovecot_form(passwords.hash_password(password))

    good = subprocess.run(
        [doveadm, "pw", "-t", encoded, "-p", password], capture_output=True, text=True, check=False
    )
    bad = subprocess.run(
        [doveadm, "pw", "-t", encoded, "-p", password + "!"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert good.returncode == 0 and "(verified)" in good.stdout
    assert bad.returncode != 0
