"""The hardened HTTP client for providers' suggestion APIs (providers.outbound)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from providers import outbound
from providers.outbound import FetchFailed, fetch_json

CONFIG = outbound.ClientConfig(user_agent="mailportal-test/1")
GOOD = json.dumps({"addresses": ["a@p.example"]}).encode()


def fetch(url: str, *, timeout: float = 2.0, max_bytes: int = 65_536, **kwargs: Any) -> bytes:
    config = kwargs.pop("config", CONFIG)
    return fetch_json(
        url, {"first_name": "Zoë"}, timeout=timeout, max_bytes=max_bytes, config=config
    )


def test_fetch_sends_the_names_and_the_user_agent(fake_provider: Callable[..., Any]) -> None:
    fake = fake_provider(body=GOOD)

    assert fetch(fake.url) == GOOD
    assert fake.hits[0].query == {"first_name": ["Zoë"]}
    assert fake.hits[0].headers["User-Agent"] == "mailportal-test/1"
    assert fake.hits[0].headers["Accept"] == "application/json"


def test_fetch_reuses_one_connection_for_one_provider(fake_provider: Callable[..., Any]) -> None:
    fake = fake_provider(body=GOOD)

    fetch(fake.url)
    fetch(fake.url)

    assert fake.hits[0].client_port == fake.hits[1].client_port


def test_fetch_leaves_from_the_configured_source_address(
    fake_provider: Callable[..., Any],
) -> None:
    fake = fake_provider(body=GOOD)
    config = outbound.ClientConfig(user_agent="t", source_address="127.0.0.3")

    fetch(fake.url, config=config)

    assert fake.hits[0].client == "127.0.0.3"


def test_fetch_follows_a_redirect_on_the_same_origin(fake_provider: Callable[..., Any]) -> None:
    fake = fake_provider()
    fake.routes["/suggest"] = (302, {"Location": "/v2/suggest?first_name=Zo%C3%AB"}, b"")
    fake.routes["/v2/suggest"] = (200, {"Content-Type": "application/json"}, GOOD)

    assert fetch(fake.url) == GOOD
    assert [hit.path for hit in fake.hits] == ["/suggest", "/v2/suggest"]


def test_fetch_refuses_a_redirect_to_another_origin(fake_provider: Callable[..., Any]) -> None:
    elsewhere = fake_provider(body=GOOD)
    fake = fake_provider()
    fake.routes["/suggest"] = (302, {"Location": elsewhere.url}, b"")

    with pytest.raises(FetchFailed, match="another origin"):
        fetch(fake.url)
    assert elsewhere.hits == []


def test_fetch_stops_after_two_redirects(fake_provider: Callable[..., Any]) -> None:
    fake = fake_provider()
    fake.routes["/suggest"] = (307, {"Location": "/suggest"}, b"")

    with pytest.raises(FetchFailed, match="redirects"):
        fetch(fake.url)
    assert len(fake.hits) == 3


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"status": 404}, "HTTP 404"),
        ({"content_type": "text/html"}, "not JSON"),
        ({"content_type": "application/xml"}, "not JSON"),
        ({"body": b"x" * 70_000}, "larger than"),
    ],
)
def test_fetch_refuses_what_is_not_a_small_json_answer(
    fake_provider: Callable[..., Any], options: dict[str, Any], reason: str
) -> None:
    fake = fake_provider(**{"body": GOOD, **options})

    with pytest.raises(FetchFailed, match=reason) as refused:
        fetch(fake.url)
    assert not refused.value.timed_out


def test_fetch_caps_a_body_without_content_length(fake_provider: Callable[..., Any]) -> None:
    fake = fake_provider()
    # No length announced (the body ends when the server closes): the reader counts.
    fake.routes["/suggest"] = (
        200,
        {"Content-Type": "application/json", "Content-Length": ""},
        b"x" * 200_000,
    )

    with pytest.raises(FetchFailed, match="larger than 1000 bytes"):
        fetch(fake.url, max_bytes=1_000)


def test_fetch_times_out_a_provider_that_does_not_answer(
    fake_provider: Callable[..., Any],
) -> None:
    fake = fake_provider(delay=2.0, body=GOOD)

    with pytest.raises(FetchFailed) as refused:
        fetch(fake.url, timeout=0.5)
    assert refused.value.timed_out


def test_fetch_times_out_a_body_that_drips(fake_provider: Callable[..., Any]) -> None:
    fake = fake_provider(body=b'{"addresses": []}' + b" " * 100, mode="drip")  # 0.05 s a byte

    with pytest.raises(FetchFailed) as refused:
        fetch(fake.url, timeout=0.5)
    assert refused.value.timed_out


@pytest.mark.parametrize("fake_fixture", ["fake_provider", "tls_fake_provider"])
def test_fetch_stops_at_the_deadline_when_the_body_stalls_after_late_headers(
    request: pytest.FixtureRequest, fake_fixture: str
) -> None:
    # Headers at 0.9 s of a 1 s limit, then nothing: a read timeout set at the start (1 s)
    # would wait until about 1.9 s. Over plain http and over TLS (where the watchdog must
    # shut the socket under the TLS layer).
    fake = request.getfixturevalue(fake_fixture)(delay=0.9, mode="stall", stall=5.0, body=GOOD)

    started = time.monotonic()
    with pytest.raises(FetchFailed) as refused:
        fetch(fake.url, timeout=1.0)
    elapsed = time.monotonic() - started

    assert refused.value.timed_out
    assert elapsed < 1.0 + 0.5, elapsed  # the limit and a margin, well below 1.9


def test_fetch_stops_at_the_deadline_when_the_headers_drip(
    fake_provider: Callable[..., Any],
) -> None:
    # A byte of the headers every 50 ms never lets a read time out.
    fake = fake_provider(mode="drip-headers")

    started = time.monotonic()
    with pytest.raises(FetchFailed) as refused:
        fetch(fake.url, timeout=0.5)
    elapsed = time.monotonic() - started

    assert refused.value.timed_out
    assert elapsed < 0.5 + 0.5, elapsed


def test_fetch_reads_a_provider_over_tls(tls_fake_provider: Callable[..., Any]) -> None:
    fake = tls_fake_provider(body=GOOD)

    assert fetch(fake.url) == GOOD
    assert fake.url.startswith("https://")


def test_fetch_reports_a_refused_connection_as_an_error(free_port: int) -> None:
    with pytest.raises(FetchFailed, match="connection failed") as refused:
        fetch(f"http://127.0.0.1:{free_port}/")
    assert not refused.value.timed_out
