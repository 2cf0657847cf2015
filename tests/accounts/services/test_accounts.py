"""accounts.services.accounts: create_account's rules, names, third-party IDs and gates.

RELIABILITY.md checks 2 (normalisation collisions, Hypothesis) and 4 (registration gates).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db.migrations.loader import MigrationLoader
from django.db.models import F
from django.db.models.functions import Lower
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from accounts import passwords
from accounts.mailbox import MailboxError
from accounts.mailbox import _load as load_backend
from accounts.models import AccountStatus, CreatedVia, MailAccount, ReservedName, ThirdPartyID
from accounts.services.accounts import (
    AddressTaken,
    DatabaseUnavailable,
    RegistrationDisabled,
    WeakPassword,
    create_account,
    set_password,
)
from accounts.services.names import NameRefused
from portal.errors import InvalidInput
from providers.models import Provider, Registration
from tests.accounts.conftest import MailServer

PASSWORD = "a-long-enough-passphrase-93"


def fullwidth(text: str) -> str:
    """The full-width (compatibility) spelling of ASCII letters and digits."""
    return "".join(chr(ord(char) - 0x21 + 0xFF01) for char in text)


@pytest.fixture
def provider(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider()


def create(**overrides: Any) -> MailAccount:
    values: dict[str, Any] = {
        "domain": "example.org",
        "local_part": "juliet",
        "password": PASSWORD,
        "created_via": CreatedVia.API,
    }
    values.update(overrides)
    return create_account(**values)


# ----- the account -------------------------------------------------------------------------


def test_create_account_stores_a_normalised_name_and_an_argon2id_hash(provider: Provider) -> None:
    account = create(local_part="  Juliet ")
    assert account.local_part == "juliet"
    assert account.status == AccountStatus.ACTIVE
    assert account.password.startswith("argon2$argon2id$")
    assert passwords.verify_password(PASSWORD, account.password)
    assert PASSWORD not in account.password


def test_create_account_accepts_an_idn_domain_typed_in_unicode(
    make_provider: Callable[..., Provider],
) -> None:
    make_provider(domains=("bücher.example",), slug="buecher")
    account = create(domain="BÜCHER.example")
    assert account.address == "juliet@xn--bcher-kva.example"


# ----- password policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "short",  # under 8
        "1234567",  # under 8
        "password1",  # common
        "qwertyuiop",  # common
        "juliet1234",  # too like the user name
        "juliet@capulet",  # too like the email address
        "tab\there-and-more",  # control character
        "nul\x00inside-long",  # control character
    ],
)
def test_create_account_refuses_weak_passwords(provider: Provider, password: str) -> None:
    with pytest.raises(WeakPassword):
        create(password=password, third_pids=[("email", "juliet@capulet.example")])
    assert not MailAccount.objects.exists()


def test_create_account_names_the_similar_attribute_in_words(provider: Provider) -> None:
    with pytest.raises(WeakPassword, match="user name"):
        create(password="juliet1234")


def test_create_account_follows_the_providers_raised_minimum(provider: Provider) -> None:
    Provider.objects.filter(pk=provider.pk).update(password_min_length=30)
    with pytest.raises(WeakPassword, match="30"):
        create()


@pytest.mark.parametrize(
    "password", ["x" * 63 + "Q", "pässwört-ünd-mehr-ÄÖÜ", "🔑🔑🔑🔑-key-emoji"]
)
def test_create_account_accepts_long_and_non_ascii_passwords_exactly(
    provider: Provider, password: str
) -> None:
    account = create(password=password)
    assert passwords.verify_password(password, account.password)
    assert not passwords.verify_password(password[:-1] + "Z", account.password)


# ----- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "postmaster",
        "PostMaster",
        "post-master",
        "post.master",
        "post_master",
        "no.reply",
        "no_reply",
        "noreply",
        "mailer.daemon",
        "web-master",
        fullwidth("postmaster"),
        fullwidth("Abuse"),
        "hostmaster ",
        fullwidth("root"),
    ],
)
def test_create_account_refuses_reserved_names_and_their_punctuation_variants(
    provider: Provider, name: str
) -> None:
    with pytest.raises(NameRefused, match="reserved"):
        create(local_part=name)
    assert not MailAccount.objects.exists()


def test_create_account_refuses_names_the_administrator_reserved(provider: Provider) -> None:
    ReservedName.objects.create(name="ceo")
    for name in ("ceo", "CEO", "c.e.o", "c-eo"):
        with pytest.raises(NameRefused, match="reserved"):
            create(local_part=name)


@pytest.mark.parametrize(
    "name",
    ["ju", "j" * 33, ".juliet", "juliet.", "jul..iet", "jul.-iet", "ju liet", "jü", "juliet+x", ""],
)
def test_create_account_refuses_names_outside_the_rules(provider: Provider, name: str) -> None:
    with pytest.raises(NameRefused):
        create(local_part=name)


def test_create_account_follows_the_providers_punctuation(
    make_provider: Callable[..., Provider],
) -> None:
    make_provider(username_punctuation="")
    with pytest.raises(NameRefused, match="letters a-z, digits"):
        create(local_part="ju.liet")
    assert create(local_part="juliet2").local_part == "juliet2"


def test_the_address_is_unique_on_the_lower_cased_expression_in_the_migration() -> None:
    state = MigrationLoader(None, ignore_no_migrations=True).project_state()
    constraints = state.models["accounts", "mailaccount"].options["constraints"]
    unique = [c for c in constraints if c.name == "mailaccount_address_unique_ci"]
    assert len(unique) == 1
    assert unique[0].expressions == (Lower("local_part"), F("domain"))


def _variant_of(name: str) -> st.SearchStrategy[str]:
    """Spellings of `name` a person might type: case, full-width and mathematical letters,
    decomposed accents, surrounding spaces, trailing dots."""

    def spellings(char: str) -> list[str]:
        forms = [char, char.upper()]
        if char.isascii() and char.isalnum():
            forms.append(chr(ord(char) - 0x21 + 0xFF01))  # full-width
            forms.append(chr(ord(char.upper()) - 0x21 + 0xFF01))
        if char.isascii() and char.isalpha():
            forms.append(chr(0x1D41A + ord(char) - ord("a")))  # mathematical bold
        return forms

    chars = st.tuples(*(st.sampled_from(spellings(c)) for c in name)).map("".join)
    padding = st.sampled_from(["", " ", "\t", "\u3000", "\u00a0", "  "])
    suffix = st.sampled_from(["", ".", "..", " .", "\u0301", "\u200b"])
    return st.tuples(padding, chars, suffix, padding).map("".join)


@hypothesis_settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(variant=_variant_of("juliet"))
def test_create_account_never_makes_a_second_account_for_a_variant_of_a_name(
    provider: Provider, existing_juliet: MailAccount, variant: str
) -> None:
    with pytest.raises((AddressTaken, NameRefused)):
        create(local_part=variant)
    assert MailAccount.objects.count() == 1


@pytest.fixture
def existing_juliet(provider: Provider) -> MailAccount:
    return create()


# ----- third-party IDs ---------------------------------------------------------------------


def test_create_account_normalises_third_party_ids(provider: Provider) -> None:
    account = create(
        third_pids=[("email", " Juliet@BÜCHER.example "), ("msisdn", "0049 (170) 123-4567")]
    )
    assert sorted(account.third_pids.values_list("kind", "value")) == [
        ("email", "juliet@xn--bcher-kva.example"),
        ("msisdn", "+491701234567"),
    ]


@pytest.mark.parametrize(
    ("pid", "code"),
    [
        (("email", "no-at-sign"), "invalid_email"),
        (("email", "a@b@c"), "invalid_email"),
        (("email", "a b@example.org"), "invalid_email"),
        (("email", "a@-bad-.example"), "invalid_email"),
        (("msisdn", "12345"), "invalid_msisdn"),
        (("msisdn", "+0123456789"), "invalid_msisdn"),
        (("msisdn", "+1234567890123456"), "invalid_msisdn"),
        (("xmpp", "j@example.org"), "invalid"),
    ],
)
def test_create_account_refuses_invalid_third_party_ids(
    provider: Provider, pid: tuple[str, str], code: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        create(third_pids=[pid])
    assert refused.value.code == code
    assert not MailAccount.objects.exists()


def test_create_account_refuses_one_third_party_id_listed_twice(provider: Provider) -> None:
    with pytest.raises(InvalidInput) as refused:
        create(third_pids=[("email", "a@example.net"), ("email", "A@example.net")])
    assert refused.value.code == "invalid_third_pid"


@pytest.mark.parametrize(
    "pid", [("email", "JULIET@capulet.example"), ("msisdn", "+49 170 1234567")]
)
def test_create_account_refuses_a_third_party_id_of_another_account(
    provider: Provider, pid: tuple[str, str]
) -> None:
    create(third_pids=[("email", "juliet@capulet.example"), ("msisdn", "+491701234567")])
    with pytest.raises(AddressTaken):
        create(local_part="romeo", third_pids=[pid])
    assert MailAccount.objects.count() == 1
    assert ThirdPartyID.objects.count() == 2


# ----- gates (check 4) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "domain"),
    [
        ({"registration": Registration.CLOSED}, "example.org"),
        ({"registration": Registration.TOKEN}, "example.org"),
        ({"enabled": False}, "example.org"),
        ({"hosted": False}, "example.org"),
        ({}, "example.net"),
        ({}, "not a domain"),
    ],
)
def test_create_account_refuses_where_registration_is_not_open(
    provider: Provider, change: dict[str, Any], domain: str
) -> None:
    Provider.objects.filter(pk=provider.pk).update(**change)
    with pytest.raises(RegistrationDisabled):
        create(domain=domain)
    assert not MailAccount.objects.exists()


def test_create_account_with_a_redeemed_token_passes_the_token_gate(provider: Provider) -> None:
    Provider.objects.filter(pk=provider.pk).update(registration=Registration.TOKEN)
    assert create(token_ok=True, created_via=CreatedVia.QR_TOKEN).local_part == "juliet"


def test_administrators_create_accounts_on_a_closed_provider(provider: Provider) -> None:
    Provider.objects.filter(pk=provider.pk).update(registration=Registration.CLOSED)
    assert create(created_via=CreatedVia.ADMIN).local_part == "juliet"


# ----- the mailbox backend sees what the account is ---------------------------------------


@pytest.fixture
def recording_backend(settings: Any, tmp_path: Any) -> Iterator[Any]:
    """The `command` backend running a program that appends each request to a file."""
    log = tmp_path / "requests.jsonl"
    script = tmp_path / "mailbox.py"
    script.write_text(
        "import sys\n"
        f"with open({str(log)!r}, 'a') as out:\n"
        "    out.write(sys.stdin.read().replace('\\n', ' ') + '\\n')\n",
        encoding="utf-8",
    )
    settings.MAILBOX_BACKEND = "command"
    settings.MAILBOX_COMMAND = f"{sys.executable} {script}"
    load_backend.cache_clear()
    yield log
    load_backend.cache_clear()


def test_a_pending_account_is_created_disabled_on_the_mail_server(
    provider: Provider, recording_backend: Any
) -> None:
    create(status=AccountStatus.PENDING)
    requests = [json.loads(line) for line in recording_backend.read_text().splitlines()]
    assert [(r["action"], r["enabled"]) for r in requests] == [("create", False)]


def test_an_active_account_is_created_enabled_on_the_mail_server(
    provider: Provider, recording_backend: Any
) -> None:
    create()
    requests = [json.loads(line) for line in recording_backend.read_text().splitlines()]
    assert [(r["action"], r["enabled"]) for r in requests] == [("create", True)]


def test_create_account_answers_database_unavailable_when_the_database_is_down(
    make_provider: Callable[..., Provider], database_down: Callable[[], None]
) -> None:
    make_provider()
    database_down()

    # The first read (the domain) already fails: every front door gets the same error.
    with pytest.raises(DatabaseUnavailable):
        create()


def test_set_password_leaves_the_account_as_it_was_when_the_mail_server_refuses(
    mail_server: MailServer, provider: Provider
) -> None:
    account = create_account(
        domain="example.org", local_part="juliet", password=PASSWORD, created_via="admin"
    )
    before = (account.password, account.password_changed_at)
    mail_server.lose("juliet@example.org")

    with pytest.raises(MailboxError):
        set_password(account=account, password="another-long-passphrase-7")

    # The caller's object too: a later save() of it must not write the refused hash.
    assert (account.password, account.password_changed_at) == before
    account.refresh_from_db()
    assert (account.password, account.password_changed_at) == before
