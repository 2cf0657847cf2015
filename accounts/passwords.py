"""Pure: mailbox password hashes that both Django and Dovecot verify (argon2id, PHC form).

Django's Argon2 hasher stores ``argon2$argon2id$v=19$m=…,t=…,p=…$salt$hash``; behind the
``argon2`` prefix is the PHC string that Dovecot's ``{ARGON2ID}`` scheme (libsodium)
verifies. libsodium only verifies parallelism 1, so p=1. Parameters: m=19456 KiB, t=2, p=1,
OWASP's first recommended argon2id configuration and the floor of ASVS 11.4.2 /
RELIABILITY.md check 27; 21-24 ms of CPU per hash on the benchmark machine
(docs/benchmarks.md, "Registration").
Argon2 has no 72-byte limit (bcrypt truncates silently; RELIABILITY.md check 16).
"""

from __future__ import annotations

import functools

from django.contrib.auth.hashers import Argon2PasswordHasher
from django.views.decorators.debug import sensitive_variables

DJANGO_PREFIX = "argon2"
DOVECOT_SCHEME = "{ARGON2ID}"


class MailboxPasswordHasher(Argon2PasswordHasher):
    """Django's argon2 hasher with parameters libsodium (Dovecot) can verify."""

    time_cost = 2
    memory_cost = 19_456
    parallelism = 1


_HASHER = MailboxPasswordHasher()


@sensitive_variables()  # out of error reports, whoever calls (this frame and the hasher's)
def hash_password(password: str) -> str:
    """A new salted argon2id hash in Django's stored form."""
    return _HASHER.encode(password, _HASHER.salt())


@sensitive_variables()  # out of error reports, whoever calls (this frame and the hasher's)
def verify_password(password: str, encoded: str) -> bool:
    """True if `password` matches `encoded` (constant time inside argon2)."""
    if not encoded.startswith(f"{DJANGO_PREFIX}$argon2id$"):
        return False
    return bool(_HASHER.verify(password, encoded))


def needs_rehash(encoded: str) -> bool:
    """True when the stored hash uses other parameters than today's."""
    return bool(_HASHER.must_update(encoded))


def dovecot_form(encoded: str) -> str:
    """The same hash as Dovecot reads it: ``{ARGON2ID}$argon2id$v=19$…``.

    The database view that Dovecot queries computes the same expression in SQL; this is for
    tools (`doveadm pw -t`) and tests.
    """
    if not encoded.startswith(f"{DJANGO_PREFIX}$argon2id$"):
        raise ValueError("not an argon2id hash")
    return DOVECOT_SCHEME + encoded[len(DJANGO_PREFIX) :]


@functools.cache
def dummy_hash() -> str:
    """A hash to verify against when a login names no account, so that an unknown user
    costs the same time as a wrong password."""
    return hash_password("dummy password that matches nothing 7c1f9e")
