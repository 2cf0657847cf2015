"""The aggregator side of suggestions: ask every provider at once, collate what came in time.

Remote providers are asked over HTTP(S) by one Celery task each, in a group on the
`suggest` queue (with Redis), or from a thread pool in this process (without Redis, where
Celery would run a group one task after another). Hosted providers are answered here, by
providers.services.suggest, while the remote ones run. Whatever has not arrived by the
deadline (the slowest provider's time limit plus SUGGESTION_GRACE) is reported as a
timeout; a failure of any kind is that provider's status, never the caller's error.
See docs/suggestions.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from celery import group
from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError

from portal.errors import InvalidInput
from providers import outbound, provisioner, tasks
from providers.models import Provider
from providers.provisioner import Answer
from providers.services import suggestion_stats
from providers.services.suggest import NameQuery, hosted_answer

logger = logging.getLogger(__name__)

MAX_PROVIDERS_ASKED = 50
CACHE_PREFIX = "suggest:"


@dataclass(frozen=True)
class Target:
    """One provider to ask, as the fan-out needs it."""

    provider_pk: int
    id: str
    hosted: bool
    url: str = ""
    timeout: float = 3.0
    version: str = ""  # changes with every edit of the provider: part of the cache key
    provider: Provider | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RemoteRequest:
    """What a worker needs to ask one remote provider: plain values only (no ids to load)."""

    provider: str
    url: str
    params: dict[str, str]
    timeout: float

    def as_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "url": self.url,
            "params": self.params,
            "timeout": self.timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteRequest:
        return cls(
            provider=str(data["provider"]),
            url=str(data["url"]),
            params={str(k): str(v) for k, v in data["params"].items()},
            timeout=float(data["timeout"]),
        )


@dataclass(frozen=True)
class FanoutResult:
    """The collated answer: entries for the client, and what each provider did."""

    entries: list[dict[str, Any]]
    answers: tuple[Answer, ...]
    cached: int
    elapsed_ms: int

    @property
    def partial(self) -> bool:
        return any(
            answer.status in (provisioner.TIMEOUT, provisioner.ERROR) for answer in self.answers
        )


def parse_provider_ids(raw: str) -> list[str] | None:
    """The `providers=` list (ids are primary domains), or None for "every provider"."""
    ids = list(dict.fromkeys(item.strip().lower() for item in raw.split(",") if item.strip()))
    if len(ids) > MAX_PROVIDERS_ASKED:
        raise InvalidInput(
            f"Ask at most {MAX_PROVIDERS_ASKED} providers at once.", code="too_many_providers"
        )
    return ids or None


def collect_suggestions(
    *, query: NameQuery, provider_ids: Sequence[str] | None = None, debug: bool = False
) -> FanoutResult:
    """Suggestions of every offered provider serving `query.country` (or of those named).

    One entry per provider asked, in the provider list's order (or the order named);
    providers named but not offered get status `unknown`. Identical queries within
    SUGGESTION_CACHE_SECONDS are answered from the shared cache, provider by provider
    (failures are not cached). Returns by the deadline whatever happens to the providers.
    Side effects: one Celery task per remote provider not cached (with Redis), a cache
    write, the hourly counters of every provider asked (SuggestionStat), log lines.
    """
    started = time.perf_counter()
    targets, unknown = select_targets(country=query.country, provider_ids=provider_ids)
    cached = _cached_answers(targets, query)
    asked = [target for target in targets if target.id not in cached]
    remote = [target for target in asked if not target.hosted]
    asking = time.perf_counter()
    pending = _start_remote(remote, query)
    fresh: dict[str, Answer] = {}
    for target in asked:
        if target.hosted:
            fresh[target.id] = _answer_hosted(target, query)
    fresh.update(pending.wait())
    waited_ms = _ms_since(asking)
    order = [target.id for target in targets] if provider_ids is None else list(provider_ids)
    answers = collate(order, {**cached, **fresh}, unknown=unknown, waited_ms=waited_ms)
    _store_in_cache(targets, query, fresh)
    by_id = {answer.provider: answer for answer in answers}
    suggestion_stats.record([(target.provider_pk, by_id[target.id]) for target in asked])
    elapsed_ms = round((time.perf_counter() - started) * 1000)
    _log(answers, len(cached), elapsed_ms)
    return FanoutResult(
        entries=[answer.entry(debug=debug) for answer in answers],
        answers=tuple(answers),
        cached=len(cached),
        elapsed_ms=elapsed_ms,
    )


def collate(
    order: Sequence[str],
    answers: Mapping[str, Answer],
    *,
    unknown: Iterable[str] = (),
    waited_ms: int = 0,
) -> list[Answer]:
    """Pure: one answer per provider id in `order`; a missing one is a timeout.

    Ids in `unknown` get status `unknown`. Repeated ids are answered once. A missing
    provider's latency is `waited_ms`, how long it was waited for (the statistics would
    otherwise count the slowest providers as the fastest).
    """
    unknown_ids = set(unknown)
    collated = []
    for provider_id in dict.fromkeys(order):
        if provider_id in unknown_ids:
            collated.append(provisioner.failed(provider_id, provisioner.UNKNOWN))
        elif provider_id in answers:
            collated.append(answers[provider_id])
        else:
            collated.append(
                provisioner.failed(
                    provider_id, provisioner.TIMEOUT, "no answer by the deadline", waited_ms
                )
            )
    return collated


def select_targets(
    *, country: str, provider_ids: Sequence[str] | None
) -> tuple[list[Target], list[str]]:
    """The providers to ask and the named ids that match no offered provider."""
    targets: list[Target] = []
    providers = Provider.objects.offered().prefetch_related("domains").order_by("name", "pk")
    for provider in providers:
        domains = list(provider.domains.all())
        primary = domains[0].name
        if provider_ids is not None:
            if primary not in provider_ids:
                continue
        elif country and "*" not in provider.country_list and country not in provider.country_list:
            continue
        targets.append(
            Target(
                provider_pk=provider.pk,
                id=primary,
                hosted=provider.hosted,
                url=provider.suggestion_url,
                timeout=provider.effective_suggestion_timeout,
                version=provider.updated_at.isoformat(),
                provider=provider,
            )
        )
    found = {target.id for target in targets}
    unknown = [pid for pid in provider_ids or () if pid not in found]
    return targets, unknown


def query_remote(request: RemoteRequest) -> Answer:
    """Ask one remote provider (the body of the Celery task, or of a pool thread).

    Never raises for what the provider does: a timeout, a refused or reset connection, an
    HTTP error, a redirect elsewhere, an oversized or non-JSON or malformed answer are each
    an Answer with status `timeout` or `error`, logged with the reason.
    """
    started = time.perf_counter()
    config = outbound.ClientConfig(
        user_agent=settings.SUGGESTION_USER_AGENT,
        source_address=settings.SUGGESTION_SOURCE_ADDRESS,
    )
    try:
        body = outbound.fetch_json(
            request.url,
            request.params,
            timeout=request.timeout,
            max_bytes=settings.SUGGESTION_MAX_RESPONSE_BYTES,
            config=config,
        )
        latency_ms = _ms_since(started)
        answer = provisioner.parse_remote_answer(request.provider, body, latency_ms)
    except outbound.FetchFailed as exc:
        status = provisioner.TIMEOUT if exc.timed_out else provisioner.ERROR
        answer = provisioner.failed(request.provider, status, exc.detail, _ms_since(started))
    except provisioner.MalformedAnswer as exc:
        answer = provisioner.failed(
            request.provider, provisioner.ERROR, f"malformed answer: {exc}", _ms_since(started)
        )
    if not answer.succeeded and answer.status != provisioner.DECLINED:
        logger.warning(
            "suggestions from %s dropped: %s (%s, %d ms)",
            request.provider,
            answer.detail,
            answer.status,
            answer.latency_ms,
        )
    return answer


# --- remote providers: Celery group or thread pool ------------------------------------------


class _Pending:
    """Remote answers on their way; wait() returns those in by the deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def wait(self) -> dict[str, Answer]:
        return {}


class _ThreadsPending(_Pending):
    def __init__(self, deadline: float, futures: dict[Future[Answer], RemoteRequest]) -> None:
        super().__init__(deadline)
        self.futures = futures

    def wait(self) -> dict[str, Answer]:
        done, late = wait_futures(self.futures, timeout=max(0.0, self.deadline - time.monotonic()))
        for future in late:
            # Still queued behind other fan-outs' calls: never started, never will be. One
            # already running ends at its own time limit (outbound cuts the connection).
            future.cancel()
        answers = {}
        for future in done:
            request = self.futures[future]
            try:
                answers[request.provider] = future.result()
            except Exception as exc:  # a bug of ours, not the provider's doing
                answers[request.provider] = _unexpected(request.provider, exc)
        return answers


class _CeleryPending(_Pending):
    """The group's results, collected until the deadline on our own clock.

    Celery's join_native waits in whole seconds on the Redis backend whatever its
    `interval` (a 0.3 s timeout took 1.02 s, 2.2 s took 3.03 s), past our deadline. So the
    wait is ours: the result backend's pub/sub is drained for at most what is left (it
    returns as soon as a message arrives, and the messages mark our results ready), and the
    results still missing are read with one MGET every POLL_SECONDS (every FALLBACK_SECONDS
    where pub/sub delivers them) and once more at the deadline, in case a message was lost
    while the pub/sub connection was being re-established.
    """

    def __init__(self, deadline: float, result: Any, requests: Sequence[RemoteRequest]) -> None:
        super().__init__(deadline)
        self.result = result
        self.requests = requests

    def wait(self) -> dict[str, Answer]:
        backend = self.result.backend
        children = {child.id: child for child in self.result.results}
        providers = {
            child.id: request.provider
            for child, request in zip(self.result.results, self.requests, strict=True)
        }
        missing = set(children)
        answers: dict[str, Answer] = {}

        def collect(task_id: str, meta: Mapping[str, Any]) -> None:
            missing.discard(task_id)
            answers[providers[task_id]] = _answer_from_meta(providers[task_id], meta)

        try:
            pubsub = hasattr(backend, "add_pending_results")  # Redis: results are published
            if pubsub:
                backend.add_pending_results(list(children.values()), weak=True)
            every = FALLBACK_SECONDS if pubsub else POLL_SECONDS
            next_read = time.monotonic() + every
            while missing:
                for task_id in [t for t in missing if children[t].on_ready.ready]:
                    child = children[task_id]  # its state is cached now: no round trip
                    collect(task_id, {"status": child.state, "result": child.result})
                now = time.monotonic()
                if missing and (now >= next_read or now >= self.deadline):
                    for task_id, meta in _ready_results(backend, list(missing)):
                        collect(task_id, meta)
                    next_read = now + every
                if not missing or now >= self.deadline:
                    break
                _idle(backend, min(self.deadline, next_read) - now)
        except Exception as exc:  # the result backend's own errors (redis-py, Celery)
            logger.warning("suggestions: result backend failed: %s", type(exc).__name__)
            answers |= {
                providers[task_id]: provisioner.failed(
                    providers[task_id], provisioner.ERROR, "result backend unavailable"
                )
                for task_id in missing
            }
        finally:
            self._forget()
        return answers

    def _forget(self) -> None:
        # Names and addresses are personal data: drop them from the result backend now
        # rather than after CELERY_RESULT_EXPIRES (late answers still land, and expire).
        # Forgetting also ends this process's subscription to the results.
        try:
            self.result.forget()
        except Exception as exc:  # best effort
            logger.info("suggestions: could not forget results: %s", type(exc).__name__)


# Reading the missing results from the result backend: this often where nothing tells us
# that one has landed, this often where its pub/sub does (a safety net there).
POLL_SECONDS = 0.02
FALLBACK_SECONDS = 0.25


def _ready_results(backend: Any, task_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(task id, meta) of those of `task_ids` that have finished: one MGET, no waiting."""
    found: list[tuple[str, dict[str, Any]]] = []
    # get_many with timeout=0 reads once, then gives up on the rest with a TimeoutError.
    with contextlib.suppress(CeleryTimeout):
        found.extend(backend.get_many(task_ids, timeout=0))
    return found


def _idle(backend: Any, seconds: float) -> None:
    """Wait up to `seconds`, less if a message arrives on the result backend's pub/sub."""
    if seconds <= 0:
        return
    consumer = getattr(backend, "result_consumer", None)
    if consumer is None:
        time.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):  # socket.timeout: nothing arrived, fine
        consumer.drain_events(timeout=seconds)


def _answer_from_meta(provider: str, meta: Mapping[str, Any]) -> Answer:
    """A finished query_provider task's answer; a failed or expired task is a failure."""
    status, value = meta.get("status"), meta.get("result")
    if status == "SUCCESS" and isinstance(value, dict):
        return Answer.from_json(value)
    if status == "REVOKED":  # expired in the queue: no worker took it in time
        return provisioner.failed(provider, provisioner.TIMEOUT, "not taken by a worker in time")
    detail = type(value).__name__ if isinstance(value, BaseException) else str(status)
    logger.error("suggestions from %s: the task failed unexpectedly: %s", provider, detail)
    return provisioner.failed(provider, provisioner.ERROR, f"task failed: {detail}")


def _unexpected(provider: str, exc: BaseException) -> Answer:
    # Logged with the type and where it was raised, not the message: that may quote the
    # names asked for, which are personal data.
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    logger.error(
        "suggestions from %s failed unexpectedly: %s%s", provider, type(exc).__name__, where
    )
    return provisioner.failed(provider, provisioner.ERROR, f"unexpected {type(exc).__name__}")


_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=settings.SUGGESTION_THREADS, thread_name_prefix="suggest"
            )
        return _executor


def _start_remote(remote: Sequence[Target], query: NameQuery) -> _Pending:
    if not remote:
        return _Pending(time.monotonic())
    params = {"first_name": query.first_name, "last_name": query.last_name}
    if query.country:
        params["country"] = query.country
    requests = [
        RemoteRequest(provider=t.id, url=t.url, params=params, timeout=t.timeout) for t in remote
    ]
    deadline = time.monotonic() + max(t.timeout for t in remote) + settings.SUGGESTION_GRACE
    if settings.CELERY_TASK_ALWAYS_EAGER:
        pool = _thread_pool()
        futures = {pool.submit(query_remote, request): request for request in requests}
        return _ThreadsPending(deadline, futures)
    signatures = [
        tasks.query_provider.s(request.as_json()).set(**_task_options(request))
        for request in requests
    ]
    try:
        # One immediate retry: enough for a pooled connection Redis closed when it
        # restarted; a broker that is down answers within milliseconds (the transport
        # options in settings make connecting give up at once, not after ~6 s).
        result = group(signatures).apply_async(retry=True, retry_policy=settings.REDIS_QUICK_RETRY)
    except Exception as exc:  # the broker's or result backend's own errors (kombu, redis-py)
        logger.warning("suggestions: broker unavailable: %s", type(exc).__name__)
        failed = {
            r.provider: provisioner.failed(r.provider, provisioner.ERROR, "broker unavailable")
            for r in requests
        }
        return _Done(deadline, failed)
    return _CeleryPending(deadline, result, requests)


def _task_options(request: RemoteRequest) -> dict[str, Any]:
    return {
        # Not worth running once the answer has gone out without it.
        "expires": request.timeout + settings.SUGGESTION_GRACE,
        # What bounds a task is the HTTP client: outbound.fetch_json cuts the connection
        # at request.timeout. Celery enforces these limits only in the prefork pool, not
        # in the threads pool the `suggest` workers run (deploy/Procfile): there they are
        # a no-op, here for a deployment that runs the queue on prefork workers.
        "soft_time_limit": request.timeout + 1,
        "time_limit": request.timeout + 2,
    }


class _Done(_Pending):
    def __init__(self, deadline: float, answers: dict[str, Answer]) -> None:
        super().__init__(deadline)
        self.answers = answers

    def wait(self) -> dict[str, Answer]:
        return self.answers


# --- hosted providers, cache, log -------------------------------------------------------------


def _answer_hosted(target: Target, query: NameQuery) -> Answer:
    if target.provider is None:  # select_targets always sets it
        return provisioner.failed(target.id, provisioner.ERROR, "provider not loaded")
    try:
        return hosted_answer(provider=target.provider, query=query)
    except DatabaseError as exc:
        logger.warning("suggestions from %s (hosted) failed: %s", target.id, exc)
        return provisioner.failed(target.id, provisioner.ERROR, "database unavailable")


def _cache_key(target: Target, query: NameQuery) -> str:
    material = json.dumps(
        [target.provider_pk, target.version, query.first_name, query.last_name, query.country]
    )
    return CACHE_PREFIX + hashlib.sha256(material.encode()).hexdigest()


def _cached_answers(targets: Sequence[Target], query: NameQuery) -> dict[str, Answer]:
    if not targets or settings.SUGGESTION_CACHE_SECONDS <= 0:
        return {}
    keys = {_cache_key(target, query): target.id for target in targets}
    try:
        found = cache.get_many(list(keys))
    except Exception as exc:  # the cache's own errors: ask the providers instead
        logger.warning("suggestions: cache unavailable: %s", type(exc).__name__)
        return {}
    return {keys[key]: Answer.from_json(value) for key, value in found.items()}


def _store_in_cache(
    targets: Sequence[Target], query: NameQuery, answers: Mapping[str, Answer]
) -> None:
    if settings.SUGGESTION_CACHE_SECONDS <= 0:
        return
    entries = {
        _cache_key(target, query): answers[target.id].as_json()
        for target in targets
        if target.id in answers
        and answers[target.id].status in (provisioner.OK, provisioner.DECLINED)
    }
    if not entries:
        return
    try:
        cache.set_many(entries, timeout=settings.SUGGESTION_CACHE_SECONDS)
    except Exception as exc:  # a lost cache write costs one more fan-out, nothing else
        logger.warning("suggestions: cache write failed: %s", type(exc).__name__)


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _log(answers: Sequence[Answer], cached: int, elapsed_ms: int) -> None:
    # Counts only: the names asked for are personal data and stay out of the log.
    counts = dict.fromkeys(provisioner.STATUSES, 0)
    for answer in answers:
        counts[answer.status] += 1
    summary = " ".join(f"{status}={count}" for status, count in counts.items() if count)
    logger.info(
        "suggestions: %d providers %s cached=%d in %d ms",
        len(answers),
        summary or "-",
        cached,
        elapsed_ms,
    )
