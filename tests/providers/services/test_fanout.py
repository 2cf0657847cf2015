"""The suggestion fan-out (providers.services.fanout), against real local HTTP servers.

The issue's first "tests must show" item runs twice: remote providers asked by a real
Celery worker through Redis (fixture `celery_worker`), and from threads without Redis.
RELIABILITY.md checks 23 (hostile provider answers) and 24 (partial provider failure).
"""

from __future__ import annotations

import contextlib
import gc
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from accounts.services.accounts import create_account
from providers import provisioner
from providers.models import Provider, SuggestionStat
from providers.provisioner import Answer
from providers.services import fanout
from providers.services.suggest import NameQuery

JULIET = NameQuery(first_name="Juliet", last_name="Capulet")
# The remote providers' time limit (make_remote_provider) plus SUGGESTION_GRACE (below).
DEADLINE = 1.0 + 0.3
# Added to every upper bound on time: scheduling slack on a loaded 2-core machine. Each
# bound stays below what the behaviour it rules out would take (stated beside it).
MARGIN = 0.5


@pytest.fixture(autouse=True)
def _no_cache(settings: Any) -> None:
    # Each test asks fresh; the cache has tests of its own.
    settings.SUGGESTION_CACHE_SECONDS = 0
    settings.SUGGESTION_GRACE = 0.3


def by_provider(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["provider"]: entry for entry in entries}


# ----- the scenario -------------------------------------------------------------------


def test_fanout_answers_in_about_the_timeout_with_the_good_providers_and_right_statuses(
    fanout_mode: str,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
) -> None:
    quick = fake_provider(delay=0.1)
    slow = fake_provider(delay=3.0)
    broken = fake_provider(body=b'{"succeeded": true, "addresses": [')
    make_remote_provider(quick.url, domain="quick.example")
    make_remote_provider(slow.url, domain="slow.example")
    make_remote_provider(broken.url, domain="broken.example")

    started = time.monotonic()
    result = fanout.collect_suggestions(query=JULIET)
    elapsed = time.monotonic() - started

    # The slow provider is cut at its 1 s limit; the delays add up to 3.1 s.
    assert 0.9 <= elapsed < DEADLINE + MARGIN, elapsed
    entries = by_provider(result.entries)
    assert set(entries) == {"quick.example", "slow.example", "broken.example", "hosted.example"}
    assert entries["quick.example"] == {
        "provider": "quick.example",
        "succeeded": True,
        "addresses": [f"juliet.capulet@p{quick.server.server_address[1]}.example"],
        "price": 0,
    }
    assert entries["hosted.example"]["succeeded"] is True
    assert entries["hosted.example"]["addresses"][:2] == [
        "juliet.capulet@hosted.example",
        "julietcapulet@hosted.example",
    ]
    assert entries["slow.example"]["succeeded"] is False
    assert entries["slow.example"]["status"] == "timeout"
    assert entries["broken.example"]["succeeded"] is False
    assert entries["broken.example"]["status"] == "error"
    assert result.partial
    # Each remote provider was asked exactly once, with the names, saying who asks.
    for fake in (quick, slow, broken):
        assert len(fake.hits) == 1
        assert fake.hits[0].query["first_name"] == ["Juliet"]
        assert fake.hits[0].query["last_name"] == ["Capulet"]
        assert fake.hits[0].headers["User-Agent"].startswith("mailportal-suggestions/1 (+")


def test_fanout_keeps_diagnostic_keys_off_successful_entries(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
) -> None:
    good = fake_provider()
    make_remote_provider(good.url, domain="good.example")

    entries = fanout.collect_suggestions(query=JULIET).entries

    for entry in entries:
        assert entry["succeeded"] is True
        assert "status" not in entry
        assert "latency_ms" not in entry
    debug = fanout.collect_suggestions(query=JULIET, debug=True).entries
    assert all(entry["status"] == "ok" and entry["latency_ms"] >= 0 for entry in debug)


def test_fanout_asks_remote_providers_in_parallel_without_redis(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
) -> None:
    fakes = [fake_provider(delay=0.4) for _ in range(5)]
    for index, fake in enumerate(fakes):
        make_remote_provider(fake.url, domain=f"p{index}.example", suggestion_timeout=3.0)

    started = time.monotonic()
    result = fanout.collect_suggestions(query=JULIET)
    elapsed = time.monotonic() - started

    assert [entry["succeeded"] for entry in result.entries] == [True] * 5
    assert elapsed < 0.4 + 2 * MARGIN, elapsed  # one after another would take 2 s


# ----- check 24: partial provider failure -----------------------------------------------------


def test_fanout_reports_timeout_500_and_reset_and_still_answers_before_the_deadline(
    fanout_mode: str,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
) -> None:
    good = fake_provider(delay=0.05)
    make_remote_provider(good.url, domain="good.example")
    make_remote_provider(fake_provider(delay=5).url, domain="stalls.example")
    make_remote_provider(fake_provider(status=500, body=b"oops").url, domain="fails.example")
    make_remote_provider(fake_provider(mode="reset").url, domain="resets.example")

    started = time.monotonic()
    result = fanout.collect_suggestions(query=JULIET)
    elapsed = time.monotonic() - started

    assert elapsed < 3.0, elapsed  # RELIABILITY.md: within the deadline (e.g. 3 s)
    statuses = {answer.provider: answer.status for answer in result.answers}
    assert statuses == {
        "good.example": "ok",
        "stalls.example": "timeout",
        "fails.example": "error",
        "resets.example": "error",
        "hosted.example": "ok",
    }
    assert result.partial
    assert by_provider(result.entries)["good.example"]["addresses"]


def test_fanout_reports_an_unreachable_provider_as_error(
    threads_mode: None, make_remote_provider: Callable[..., Provider], free_port: int
) -> None:
    make_remote_provider(f"http://127.0.0.1:{free_port}/", domain="down.example")

    result = fanout.collect_suggestions(query=JULIET)

    assert result.entries == [
        {
            "provider": "down.example",
            "succeeded": False,
            "status": "error",
            "latency_ms": result.entries[0]["latency_ms"],
        }
    ]


# ----- check 23: hostile provider answers -----------------------------------------------------

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<r><addresses>&x;</addresses></r>"""

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">'.encode()
        for n in range(1, 10)
    )
    + b"]><lolz>&lol9;</lolz>"
)


class EntityListener:
    """A TCP listener an external entity would have to connect to; counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("content_type", ["text/xml", "application/json"])
def test_fanout_drops_hostile_provider_answers_and_keeps_the_others(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    content_type: str,
) -> None:
    settings.SUGGESTION_MAX_RESPONSE_BYTES = 65_536
    listener = EntityListener()
    xxe_http = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:'
        + str(listener.port).encode()
        + b'/">]><r>&x;</r>'
    )
    hostile = {
        "xxe-file.example": XXE_FILE,
        "xxe-http.example": xxe_http,
        "laughs.example": BILLION_LAUGHS,
        "huge.example": b'{"addresses": ["' + b"a" * 1_100_000 + b'@x.example"]}',
        "deep.example": b"[" * 10_000 + b"]" * 10_000,
        "deep-xml.example": b"<a>" * 10_000 + b"</a>" * 10_000,
    }
    for domain, body in hostile.items():
        make_remote_provider(fake_provider(body=body, content_type=content_type).url, domain=domain)
    good = fake_provider(delay=0.05)
    make_remote_provider(good.url, domain="good.example")

    try:
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="providers.services.fanout"):
            result = fanout.collect_suggestions(query=JULIET)
        elapsed = time.monotonic() - started
    finally:
        listener.close()

    statuses = {answer.provider: answer.status for answer in result.answers}
    assert {domain: statuses[domain] for domain in hostile} == dict.fromkeys(hostile, "error")
    assert statuses["good.example"] == "ok"
    assert statuses["hosted.example"] == "ok"
    # The good ones' "ok" shows they came before the deadline; this bounds the whole call.
    assert elapsed < DEADLINE + MARGIN, elapsed
    assert listener.connections == 0
    text = json.dumps(result.entries)
    assert "root:" not in text and "lollol" not in text
    dropped = {r.getMessage().split()[2] for r in caplog.records if "dropped" in r.getMessage()}
    assert dropped == set(hostile)


# ----- selection, cache, statistics ------------------------------------------------------------


def test_fanout_asks_only_providers_serving_the_country_or_the_ones_named(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
) -> None:
    german = fake_provider()
    french = fake_provider()
    make_remote_provider(german.url, domain="de.example", countries="DE,AT")
    make_remote_provider(french.url, domain="fr.example", countries="FR")

    in_germany = fanout.collect_suggestions(query=NameQuery("Jürgen", "Müller", "DE"))
    named = fanout.collect_suggestions(
        query=JULIET, provider_ids=["fr.example", "nowhere.example", "hosted.example"]
    )

    assert {e["provider"] for e in in_germany.entries} == {"de.example", "hosted.example"}
    assert german.hits[0].query["country"] == ["DE"]
    assert french.hits[0].query.get("country") is None  # asked only by name, without country
    assert [(e["provider"], e["succeeded"]) for e in named.entries] == [
        ("fr.example", True),
        ("nowhere.example", False),
        ("hosted.example", True),
    ]
    assert named.entries[1]["status"] == "unknown"


def test_fanout_leaves_out_disabled_and_unlisted_providers(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    make_provider: Callable[..., Provider],
) -> None:
    fake = fake_provider()
    make_remote_provider(fake.url, domain="off.example", enabled=False)
    make_remote_provider(fake.url, domain="notos.example", tos_url="")
    make_provider(
        domains=("invite.example",),
        registration="token",
        tos_url="https://invite.example/tos",
        privacy_url="https://invite.example/privacy",
    )

    assert fanout.collect_suggestions(query=JULIET).entries == []
    assert fake.hits == []


def test_fanout_answers_an_identical_query_from_the_cache_but_not_failures(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    settings: Any,
    free_port: int,
) -> None:
    settings.SUGGESTION_CACHE_SECONDS = 60
    good = fake_provider()
    make_remote_provider(good.url, domain="good.example")
    make_remote_provider(f"http://127.0.0.1:{free_port}/", domain="down.example")

    first = fanout.collect_suggestions(query=JULIET)
    second = fanout.collect_suggestions(query=JULIET)
    other = fanout.collect_suggestions(query=NameQuery("Romeo", "Montague"))

    assert by_provider(second.entries)["good.example"] == by_provider(first.entries)["good.example"]
    assert (first.cached, second.cached, other.cached) == (0, 1, 0)
    assert len(good.hits) == 2  # Juliet once, Romeo once
    assert [a.status for a in second.answers] == ["error", "ok"]  # the failure asked again


def test_fanout_cache_forgets_a_provider_after_an_admin_edit(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    settings: Any,
) -> None:
    settings.SUGGESTION_CACHE_SECONDS = 60
    good = fake_provider()
    provider = make_remote_provider(good.url, domain="good.example")
    fanout.collect_suggestions(query=JULIET)
    provider.name = "Renamed"
    provider.save()

    fanout.collect_suggestions(query=JULIET)

    assert len(good.hits) == 2


def test_fanout_counts_each_asked_provider_in_this_hours_statistics(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
    free_port: int,
) -> None:
    good = make_remote_provider(fake_provider(delay=0.05).url, domain="good.example")
    down = make_remote_provider(f"http://127.0.0.1:{free_port}/", domain="down.example")
    slow = make_remote_provider(fake_provider(delay=3).url, domain="slow.example")

    fanout.collect_suggestions(query=JULIET)
    fanout.collect_suggestions(query=NameQuery("Romeo", "Montague"))

    stats = {s.provider_id: s for s in SuggestionStat.objects.all()}
    assert set(stats) == {good.pk, down.pk, slow.pk, hosted.pk}
    assert (stats[good.pk].queries, stats[good.pk].succeeded) == (2, 2)
    assert stats[good.pk].addresses == 2
    assert 50 <= stats[good.pk].latency_ms_max < 1000
    assert (stats[down.pk].queries, stats[down.pk].errors) == (2, 2)
    assert (stats[slow.pk].queries, stats[slow.pk].timeouts) == (2, 2)
    assert stats[hosted.pk].succeeded == 2
    assert stats[hosted.pk].addresses == 10  # five each


def test_fanout_hosted_suggestions_skip_taken_addresses(
    threads_mode: None, hosted: Provider, transactional_db: None
) -> None:
    create_account(
        domain="hosted.example",
        local_part="juliet.capulet",
        password="romeo-and-juliet-42",
        created_via="admin",
    )

    entry = fanout.collect_suggestions(query=JULIET).entries[0]

    assert "juliet.capulet@hosted.example" not in entry["addresses"]
    assert entry["addresses"][0] == "julietcapulet@hosted.example"


def test_fanout_reports_error_for_every_remote_provider_when_the_broker_is_down(
    settings: Any,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
    redis_client: Any,
    free_port: int,
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    make_remote_provider(fake_provider().url, domain="good.example")

    with celery_through(broker=f"redis://127.0.0.1:{free_port}/0"):
        started = time.monotonic()
        result = fanout.collect_suggestions(query=JULIET)
        elapsed = time.monotonic() - started

    statuses = {answer.provider: answer.status for answer in result.answers}
    assert statuses == {"good.example": "error", "hosted.example": "ok"}
    # kombu's default retries for broker_connection_timeout took about 6 s.
    assert elapsed < DEADLINE + MARGIN, elapsed


# While Redis is down, Celery's result consumer also fails to unsubscribe from inside
# AsyncResult.__del__ (a frozen result of the group dropped as the failed send unwinds);
# Python can only print that ("Exception ignored in"), which is all it does here.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function AsyncResult.__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)
def test_fanout_answers_fast_while_redis_is_down_and_fully_again_once_it_is_back(
    settings: Any,
    celery_worker: Any,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
    redis_proxy: Any,
) -> None:
    # Broker and result backend reach Redis through a proxy that goes down and comes back
    # (the worker keeps its own connection: only this process loses Redis).
    settings.CELERY_TASK_ALWAYS_EAGER = False
    make_remote_provider(fake_provider(delay=0.05).url, domain="good.example")

    with celery_through(broker=redis_proxy.url, backend=redis_proxy.url):
        before = fanout.collect_suggestions(query=JULIET)
        redis_proxy.down()
        started = time.monotonic()
        down = [fanout.collect_suggestions(query=JULIET) for _ in range(2)]
        elapsed = time.monotonic() - started
        redis_proxy.up()
        after = fanout.collect_suggestions(query=JULIET)

    def statuses(result: fanout.FanoutResult) -> dict[str, str]:
        return {answer.provider: answer.status for answer in result.answers}

    assert statuses(before) == {"good.example": "ok", "hosted.example": "ok"}
    for result in down:
        assert statuses(result) == {"good.example": "error", "hosted.example": "ok"}
    # Two fan-outs; the defaults' retries took about 6 s (publishing) and 19 s (the result
    # backend's pub/sub) each.
    assert elapsed < DEADLINE + MARGIN, elapsed
    # No restart needed: the same process publishes and collects again.
    assert statuses(after) == {"good.example": "ok", "hosted.example": "ok"}


def test_fanout_answers_at_the_deadline_when_no_worker_takes_the_tasks(
    settings: Any,
    celery_worker: Any,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    fake = fake_provider()
    remote = make_remote_provider(fake.url, domain="good.example")

    with celery_worker.frozen():
        started = time.monotonic()
        result = fanout.collect_suggestions(query=JULIET)
        elapsed = time.monotonic() - started
        time.sleep(0.2)  # past the task's `expires` (counted from its sending) for sure

    statuses = {answer.provider: answer.status for answer in result.answers}
    assert statuses == {"good.example": "timeout", "hosted.example": "ok"}
    # join_native waited in whole seconds on Redis: 2 s for this 1.3 s deadline.
    assert DEADLINE <= elapsed < DEADLINE + MARGIN, elapsed
    # The hourly statistics count the wait, not 0 ms, for a provider that never answered.
    stat = SuggestionStat.objects.get(provider=remote)
    assert (stat.queries, stat.timeouts) == (1, 1)
    assert DEADLINE * 1000 <= stat.latency_ms_max < (DEADLINE + MARGIN) * 1000
    time.sleep(0.3)  # the thawed worker finds the task expired and does not ask
    assert fake.hits == []


def test_fanout_stops_waiting_for_a_provider_that_stalls_after_its_headers(
    fanout_mode: str,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
) -> None:
    # Headers at 0.9 s of its 1 s limit, then nothing for 5 s.
    stalls = fake_provider(delay=0.9, mode="stall", stall=5.0)
    make_remote_provider(stalls.url, domain="stalls.example")
    make_remote_provider(fake_provider(delay=0.05).url, domain="good.example")

    started = time.monotonic()
    result = fanout.collect_suggestions(query=JULIET)
    elapsed = time.monotonic() - started

    statuses = {answer.provider: answer.status for answer in result.answers}
    assert statuses == {"stalls.example": "timeout", "good.example": "ok", "hosted.example": "ok"}
    # Before: the body read waited its full read timeout (about 1.9 s), then whole seconds.
    assert elapsed < DEADLINE + MARGIN, elapsed


def test_fanout_turns_an_unexpected_failure_into_an_error_answer(
    fanout_mode: str,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
    hosted: Provider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A lone surrogate cannot be URL-encoded: the HTTP client raises UnicodeEncodeError,
    # which no provider causes and query_remote does not expect. (The API refuses such a
    # name with 400; the service may be called by anything.)
    fake = fake_provider()
    make_remote_provider(fake.url, domain="good.example")

    with caplog.at_level("ERROR", logger="providers.services.fanout"):
        result = fanout.collect_suggestions(query=NameQuery("Juliet\udc80", "Capulet"))

    statuses = {answer.provider: answer.status for answer in result.answers}
    assert statuses["good.example"] == "error"
    assert fake.hits == []
    if fanout_mode == "threads":  # the worker logs its own failure in Celery mode
        assert "UnicodeEncodeError" in caplog.text
        assert "\udc80" not in caplog.text and "Juliet" not in caplog.text


def test_fanout_cancels_calls_still_queued_at_the_deadline(
    threads_mode: None,
    fake_provider: Callable[..., Any],
    make_remote_provider: Callable[..., Provider],
) -> None:
    # Every thread of the pool busy (as under other fan-outs' load): the two calls of this
    # fan-out wait in the queue past its deadline. They must then never run.
    fake = fake_provider()
    make_remote_provider(fake.url, domain="one.example")
    make_remote_provider(fake.url, domain="two.example")
    pool = fanout._thread_pool()
    release = threading.Event()
    blockers = [pool.submit(release.wait, 10) for _ in range(pool._max_workers)]
    try:
        result = fanout.collect_suggestions(query=JULIET)
    finally:
        release.set()
    for blocker in blockers:
        blocker.result(timeout=10)
    time.sleep(0.3)  # time for queued calls to run, had they not been cancelled

    assert [answer.status for answer in result.answers] == ["timeout", "timeout"]
    assert fake.hits == []


@contextlib.contextmanager
def celery_through(*, broker: str, backend: str | None = None) -> Iterator[None]:
    """The Celery app's broker (and result backend) at these URLs for the block."""
    from portal.celery import app

    saved = app.conf.broker_url, app.conf.result_backend
    app.conf.broker_url = broker
    if backend is not None:
        app.conf.result_backend = backend
    _reset_celery_connections(app)
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.result_backend = saved
        _reset_celery_connections(app)


def _reset_celery_connections(app: Any) -> None:
    """Close the app's broker connections and its result backend's; the next send and
    wait connect to the configured URLs.

    Closing app.pool alone leaves it closed in kombu's global registry, where every later
    send finds it ("Acquire on closed pool"): kombu's reset closes and forgets all pools,
    and _after_fork is Celery's own reset of its references to them. The result backend is
    made once per thread and kept (app._local.backend, since it is not thread-safe); its
    result consumer still lists the results of sends that failed as subscribed, and would
    try to unsubscribe them, through a Redis that may be gone, when they are collected.
    """
    from kombu import pools

    gc.collect()  # results of failed sends go now, while this test still runs
    backend = vars(app._local).pop("backend", None)
    if backend is not None:
        backend.result_consumer.subscribed_to.clear()
        backend.result_consumer.stop()  # closes its pub/sub connection
        backend.client.connection_pool.disconnect()
    pools.reset()
    app._after_fork()


# ----- pure parts -------------------------------------------------------------------------------


def test_collate_gives_one_entry_per_provider_in_order_and_timeouts_for_the_missing() -> None:
    answers = {
        "b.example": provisioner.hosted_answer("b.example", ["x@b.example"], 0),
        "c.example": provisioner.failed("c.example", provisioner.ERROR, "HTTP 500"),
    }

    collated = fanout.collate(
        ["a.example", "b.example", "c.example", "b.example", "z.example"],
        answers,
        unknown=["z.example"],
        waited_ms=1300,
    )

    assert [(a.provider, a.status) for a in collated] == [
        ("a.example", "timeout"),
        ("b.example", "ok"),
        ("c.example", "error"),
        ("z.example", "unknown"),
    ]
    assert collated[0].latency_ms == 1300  # waited for until the deadline, not 0 ms


def test_remote_request_and_answer_survive_the_broker_as_json() -> None:
    request = fanout.RemoteRequest(
        provider="p.example", url="https://p.example/s", params={"first_name": "Zoë"}, timeout=2.5
    )
    answer = Answer(
        provider="p.example",
        status="ok",
        addresses=("a@p.example", {"address": "b@p.example", "price": 5}),
        extra=(("price", 0), ("token", "abc")),
        latency_ms=12,
    )

    assert fanout.RemoteRequest.from_json(json.loads(json.dumps(request.as_json()))) == request
    assert Answer.from_json(json.loads(json.dumps(answer.as_json()))) == answer


def test_parse_provider_ids_refuses_more_than_fifty() -> None:
    assert fanout.parse_provider_ids(" A.example, b.example,a.example ") == [
        "a.example",
        "b.example",
    ]
    assert fanout.parse_provider_ids("") is None
    with pytest.raises(fanout.InvalidInput) as refused:
        fanout.parse_provider_ids(",".join(f"p{n}.example" for n in range(51)))
    assert refused.value.code == "too_many_providers"
