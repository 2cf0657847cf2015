"""Pure: the Thunderbird Account Provisioner JSON formats (shared/specs/provisioner.md).

The provider list entry, one provider's suggestion entry, and the parser of what a remote
provider's suggestion API answers. No ORM: data in, JSON-able objects out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

# Thunderbird skips a provider-list entry that lacks any of these.
REQUIRED_LIST_FIELDS = (
    "id",
    "label",
    "paid",
    "languages",
    "api",
    "tos_url",
    "privacy_url",
    "sells_domain",
)

# Statuses of one provider in a fan-out. Only "ok" is a success; the others are reported on
# failed entries (which Thunderbird drops) so that a client or an operator can see why.
OK = "ok"
TIMEOUT = "timeout"
ERROR = "error"
DECLINED = "declined"  # the provider answered correctly that it has nothing to suggest
UNKNOWN = "unknown"  # asked for by id, but no offered provider has that id
STATUSES = (OK, TIMEOUT, ERROR, DECLINED, UNKNOWN)

# What a remote answer may hold. Anything beyond is that provider's error (or, for extra
# keys that are not scalars, dropped): the entry is appended to a registration URL by
# Thunderbird, key by key, so it must stay small and flat.
MAX_ADDRESSES = 50
MAX_EXTRA_KEYS = 10
MAX_EXTRA_VALUE = 200
_EXTRA_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")
_ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,253}$")
# Keys whose meaning is ours: the provider's own values are ignored.
_OWN_KEYS = {"provider", "succeeded", "addresses", "status", "latency_ms"}

Scalar = str | int | float | bool


class MalformedAnswer(ValueError):
    """A remote provider's answer that is not a suggestion entry; says what is wrong."""


@dataclass(frozen=True)
class ListedProvider:
    """What the provider list says about one provider."""

    id: str
    label: str
    paid: bool
    languages: tuple[str, ...]
    api: str
    tos_url: str
    privacy_url: str
    sells_domain: bool = False
    countries: tuple[str, ...] = ("*",)
    icon: str = ""

    def entry(self) -> dict[str, Any]:
        """The JSON object of specs/provisioner.md, with our `countries` added."""
        entry: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "paid": self.paid,
            "languages": list(self.languages),
            "api": self.api,
            "tos_url": self.tos_url,
            "privacy_url": self.privacy_url,
            "sells_domain": self.sells_domain,
            "countries": list(self.countries),
        }
        if self.icon:
            entry["icon"] = self.icon
        return entry


def registration_template(base_url: str, slug: str) -> str:
    """The hosted registration page as a Thunderbird `api` template.

    The address comes first: Thunderbird fills the template without URL-encoding, and a
    browser cuts the URL at the first "#", which a typed name may contain, not an address.
    """
    return (
        f"{base_url.rstrip('/')}/register/{slug}/"
        "?email={email}&first_name={firstname}&last_name={lastname}"
    )


@dataclass(frozen=True)
class RegistrationQuery:
    """What a mail client put into the registration URL: the names are only hints."""

    email: str = ""
    first_name: str = ""
    last_name: str = ""


REGISTRATION_KEYS = ("email", "first_name", "last_name")
# "&" starts a new parameter only when a parameter name and "=" follow it; any other "&"
# belongs to the value before (Thunderbird leaves "Tom & Jerry" unencoded).
_PARAMETER_START = re.compile(r"&(?=[A-Za-z_][A-Za-z0-9_.-]*=)")


def parse_registration_query(raw: bytes | str) -> RegistrationQuery:
    """Read `email`, `first_name` and `last_name` from a raw, possibly unencoded query string.

    Thunderbird replaces {email}, {firstname} and {lastname} without URL-encoding
    (specs/provisioner.md), so a value may hold "&", "+", "%" or raw UTF-8. A "+" is kept as
    a plus (Thunderbird never encodes a space as "+"); "%XX" sequences are decoded; bytes
    that are not UTF-8 become U+FFFD. The first occurrence of each key counts.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    values: dict[str, str] = {}
    for part in _PARAMETER_START.split(text):
        key, equals, value = part.partition("=")
        if not equals or key not in REGISTRATION_KEYS or key in values:
            continue
        values[key] = unquote(value, errors="replace").strip()
    return RegistrationQuery(**values)


def price_value(price: Decimal | float | int) -> int | float:
    """A price as JSON shows it: 0 and whole numbers as integers, else a decimal."""
    value = Decimal(str(price))
    return int(value) if value == value.to_integral_value() else float(value)


@dataclass(frozen=True)
class Answer:
    """One provider's part of a fan-out: its status and, on success, its suggestions."""

    provider: str
    status: str
    addresses: tuple[str | dict[str, Any], ...] = ()
    extra: tuple[tuple[str, Scalar], ...] = ()
    latency_ms: int = 0
    detail: str = field(default="", compare=False)  # for logs and admin only

    @property
    def succeeded(self) -> bool:
        return self.status == OK

    def entry(self, *, debug: bool = False) -> dict[str, Any]:
        """The JSON object for clients.

        Diagnostic keys (`status`, `latency_ms`) only on failed entries, or with `debug`:
        Thunderbird appends every extra key of a successful entry to the registration URL.
        """
        if not self.succeeded:
            return {
                "provider": self.provider,
                "succeeded": False,
                "status": self.status,
                "latency_ms": self.latency_ms,
            }
        entry: dict[str, Any] = dict(self.extra)
        entry.update(provider=self.provider, succeeded=True, addresses=list(self.addresses))
        if debug:
            entry.update(status=self.status, latency_ms=self.latency_ms)
        return entry

    def as_json(self) -> dict[str, Any]:
        """A plain dict that crosses the broker (no secrets in it: names and addresses)."""
        return {
            "provider": self.provider,
            "status": self.status,
            "addresses": list(self.addresses),
            "extra": [list(pair) for pair in self.extra],
            "latency_ms": self.latency_ms,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Answer:
        return cls(
            provider=str(data["provider"]),
            status=str(data["status"]),
            addresses=tuple(data.get("addresses", ())),
            extra=tuple((str(key), value) for key, value in data.get("extra", ())),
            latency_ms=int(data.get("latency_ms", 0)),
            detail=str(data.get("detail", "")),
        )


def hosted_answer(
    provider: str, addresses: Sequence[str], price: Decimal | float, latency_ms: int = 0
) -> Answer:
    """The answer of a provider this portal hosts; with no addresses, `declined` (what a
    remote provider says with `succeeded: false`), not a success with an empty list."""
    if not addresses:
        return failed(provider, DECLINED, "nothing to suggest for this name", latency_ms)
    return Answer(
        provider=provider,
        status=OK,
        addresses=tuple(addresses),
        extra=(("price", price_value(price)),),
        latency_ms=latency_ms,
    )


def failed(provider: str, status: str, detail: str = "", latency_ms: int = 0) -> Answer:
    return Answer(provider=provider, status=status, latency_ms=latency_ms, detail=detail)


def parse_remote_answer(provider: str, body: bytes, latency_ms: int = 0) -> Answer:
    """A remote suggestion API's answer (one entry, or an array with one) as an Answer.

    Raises MalformedAnswer for anything else: not UTF-8 JSON, NaN/Infinity, nesting deep
    enough to exhaust the parser, another shape, a wrong type, an address that is not one.
    `succeeded: false` is a correct answer with nothing in it (status `declined`).
    """
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedAnswer(f"not JSON: {type(exc).__name__}") from None
    if isinstance(data, list):
        if len(data) != 1:
            raise MalformedAnswer(f"an array of {len(data)} entries, not one")
        data = data[0]
    if not isinstance(data, dict):
        raise MalformedAnswer(f"a JSON {type(data).__name__}, not an object")
    succeeded = data.get("succeeded", True)
    if not isinstance(succeeded, bool):
        raise MalformedAnswer("succeeded is not true or false")
    if not succeeded:
        return failed(provider, DECLINED, "the provider has no suggestions", latency_ms)
    addresses = _addresses(data.get("addresses"))
    extra = []
    if "price" in data:
        extra.append(("price", _price(data["price"])))
    for key, value in data.items():
        if key in _OWN_KEYS or key == "price" or not _EXTRA_KEY.match(str(key)):
            continue
        if _is_scalar(value) and len(extra) < MAX_EXTRA_KEYS:
            extra.append((key, value))
    return Answer(
        provider=provider,
        status=OK,
        addresses=tuple(addresses),
        extra=tuple(extra),
        latency_ms=latency_ms,
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _addresses(raw: Any) -> list[str | dict[str, Any]]:
    if not isinstance(raw, list):
        raise MalformedAnswer("addresses is not an array")
    if len(raw) > MAX_ADDRESSES:
        raise MalformedAnswer(f"more than {MAX_ADDRESSES} addresses")
    addresses: list[str | dict[str, Any]] = []
    for item in raw:
        if isinstance(item, str):
            addresses.append(_address(item))
        elif isinstance(item, dict):
            if set(item) - {"address", "price"}:
                raise MalformedAnswer("an address object with keys besides address and price")
            entry: dict[str, Any] = {"address": _address(item.get("address"))}
            if "price" in item:
                entry["price"] = _price(item["price"])
            addresses.append(entry)
        else:
            raise MalformedAnswer("an address that is neither a string nor an object")
    return addresses


def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise MalformedAnswer("an address that is not local@domain")
    return value


def _price(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedAnswer("a price that is not a number")
    number: int | float = value
    if not math.isfinite(number) or number < 0:
        raise MalformedAnswer("a negative price")
    return number


def _is_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_EXTRA_VALUE and value.isprintable()
    if isinstance(value, bool | int):
        return True
    return isinstance(value, float) and math.isfinite(value)
