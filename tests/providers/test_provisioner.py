"""Pure: the provisioner formats (providers.provisioner): list entries, suggestion entries."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from providers import provisioner
from providers.provisioner import MalformedAnswer, parse_remote_answer


def test_listed_provider_entry_has_every_field_thunderbird_requires() -> None:
    entry = provisioner.ListedProvider(
        id="example.org",
        label="Example",
        paid=False,
        languages=("*",),
        api=provisioner.registration_template("https://portal.example/", "demo"),
        tos_url="https://example.org/tos",
        privacy_url="https://example.org/privacy",
    ).entry()

    assert set(provisioner.REQUIRED_LIST_FIELDS) <= set(entry)
    assert entry["api"] == (
        "https://portal.example/register/demo/"
        "?email={email}&first_name={firstname}&last_name={lastname}"
    )
    assert "icon" not in entry


def test_successful_entry_carries_no_diagnostic_keys_unless_debug() -> None:
    answer = provisioner.hosted_answer("example.org", ["a@example.org"], Decimal("0.00"), 7)

    assert answer.entry() == {
        "provider": "example.org",
        "succeeded": True,
        "addresses": ["a@example.org"],
        "price": 0,
    }
    assert answer.entry(debug=True)["latency_ms"] == 7


def test_hosted_answer_without_addresses_is_declined_like_a_remote_one() -> None:
    answer = provisioner.hosted_answer("example.org", [], Decimal("0.00"), 3)

    assert answer.status == provisioner.DECLINED
    assert answer.entry() == {
        "provider": "example.org",
        "succeeded": False,
        "status": "declined",
        "latency_ms": 3,
    }


def test_failed_entry_says_why() -> None:
    answer = provisioner.failed("slow.example", provisioner.TIMEOUT, "no answer", 3001)

    assert answer.entry() == {
        "provider": "slow.example",
        "succeeded": False,
        "status": "timeout",
        "latency_ms": 3001,
    }


def test_price_values_are_integers_when_whole() -> None:
    assert provisioner.price_value(Decimal("12.00")) == 12
    assert provisioner.price_value(Decimal("12.50")) == 12.5


def test_parse_remote_answer_accepts_an_object_or_an_array_of_one() -> None:
    body = {
        "provider": "forged.example",
        "succeeded": True,
        "addresses": ["a@p.example", {"address": "b@p.example", "price": 5}],
        "price": 0,
        "token": "abc",
        "nested": {"dropped": True},
        "status": "forged",
    }
    answer = parse_remote_answer("p.example", json.dumps(body).encode(), 12)
    listed = parse_remote_answer("p.example", json.dumps([body]).encode())

    assert answer.entry() == {
        "provider": "p.example",
        "succeeded": True,
        "addresses": ["a@p.example", {"address": "b@p.example", "price": 5}],
        "price": 0,
        "token": "abc",
    }
    assert listed.entry() == answer.entry()


def test_parse_remote_answer_takes_succeeded_false_as_declined() -> None:
    answer = parse_remote_answer("p.example", b'{"succeeded": false}')
    assert answer.status == provisioner.DECLINED


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b'{"addresses": [NaN]}',
        b'{"addresses": "a@p.example"}',
        b'{"addresses": ["no-at-sign"]}',
        b'{"addresses": ["a b@p.example"]}',
        b'{"addresses": [42]}',
        b'{"addresses": [{"address": "a@p.example", "extra": 1}]}',
        b'{"addresses": [], "price": -1}',
        b'{"addresses": [], "price": "free"}',
        b'{"addresses": [], "succeeded": "yes"}',
        b"[]",
        b'[{"addresses": []}, {"addresses": []}]',
        b'"a string"',
        b"[" * 10_000 + b"]" * 10_000,
        json.dumps({"addresses": [f"u{n}@p.example" for n in range(51)]}).encode(),
    ],
)
def test_parse_remote_answer_refuses_malformed_answers(body: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        parse_remote_answer("p.example", body)


# ----- the registration URL as Thunderbird fills it (raw, unencoded) ------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"email=juliet@example.org&first_name=Juliet&last_name=Capulet",
            ("juliet@example.org", "Juliet", "Capulet"),
        ),
        # "&" inside a value: only "&name=" starts a parameter.
        (
            b"email=a@example.org&first_name=Tom & Jerry&last_name=B&B",
            ("a@example.org", "Tom & Jerry", "B&B"),
        ),
        # "+" stays a plus; %XX is decoded; raw UTF-8 is read as UTF-8.
        (
            "email=a+b@example.org&first_name=Anne+Marie%20Ü&last_name=Müller 李".encode(),
            ("a+b@example.org", "Anne+Marie Ü", "Müller 李"),
        ),
        # A lone "%" and bytes that are not UTF-8 survive.
        (b"first_name=100%&last_name=\xff", ("", "100%", "\ufffd")),
        # Keys the client appends, repeats and junk are ignored; the first value counts.
        (
            b"email=a@example.org&email=b@example.org&price=0&x&first_name=A",
            ("a@example.org", "A", ""),
        ),
        (b"", ("", "", "")),
    ],
)
def test_parse_registration_query_reads_raw_values(
    raw: bytes, expected: tuple[str, str, str]
) -> None:
    query = provisioner.parse_registration_query(raw)

    assert (query.email, query.first_name, query.last_name) == expected
