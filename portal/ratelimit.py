"""Rate-limit policies (django-ratelimit) and the 429 answer with Retry-After."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest, JsonResponse
from django.utils.translation import gettext, gettext_noop, ngettext
from django_ratelimit.core import get_usage

from portal.audit import security_event
from portal.errors import PortalError, ServiceUnavailable
from portal.proxies import client_ip

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """One limit: a counter group, what it is counted per, and the setting holding the rate."""

    group: str
    rate_setting: str
    key: str = "ip"  # django-ratelimit's "ip": RATELIMIT_IP_META_KEY, IPv6 grouped by /64

    @property
    def rate(self) -> str:
        rate: str = getattr(settings, self.rate_setting)
        return rate


# In-band registration: each client address (an IPv6 /64 counts as one) may send
# REGISTRATION_RATE registration requests (10 an hour), valid or not, in a fixed window;
# replays of an earlier answer count too. Stops one host from filling a domain with accounts.
REGISTRATION = Policy(group="accounts.register", rate_setting="REGISTRATION_RATE")

# Verification codes: each client address may try REGISTRATION_VERIFY_RATE codes (30 an
# hour), on top of the 5 tries each code allows, so guessing six digits stays hopeless.
REGISTRATION_VERIFY = Policy(
    group="accounts.register.verify", rate_setting="REGISTRATION_VERIFY_RATE"
)

# Hosted registration pages (/register/<slug>/): each client address may make
# REGISTRATION_PAGE_RATE attempts (30 an hour) in a fixed window: every POST of the token,
# address and password steps counts ("change address" too), accepted or not. Enough for a person
# who mistypes a few times; stops one host from probing which names exist or filling a
# domain with accounts. Leaving the flow (cancel, back) is never counted.
REGISTRATION_PAGES = Policy(group="providers.register_page", rate_setting="REGISTRATION_PAGE_RATE")

# Suggestions (GET /api/v1/suggestions): each client address may ask SUGGESTION_RATE (30 a
# minute; admins may change it in "suggestion settings") in a fixed window. One query makes
# one outbound call per provider, so this is what stops a client from using the portal to
# hammer providers' suggestion engines (the provisioner seed: "N queries per M minutes").
SUGGESTIONS = Policy(group="providers.suggestions", rate_setting="SUGGESTION_RATE")

# DCACCOUNT redemptions (POST /dcaccount/<token>, /new_email?t=): each client address may
# send DCACCOUNT_RATE of them (60 an hour), valid or not. Enough for a class or a workshop
# behind one NAT address scanning one code; guessing a 192-bit token is hopeless anyway,
# so the limit is about one host draining a token's uses or the mail server's capacity.
DCACCOUNT = Policy(group="providers.dcaccount", rate_setting="DCACCOUNT_RATE")

# Push subscriptions: each client address may create PUSH_SUBSCRIPTION_RATE subscriptions
# (60 an hour: a phone re-subscribes after every reconnect push, several apps share a NAT).
PUSH_SUBSCRIBE = Policy(group="pushproxy.subscribe", rate_setting="PUSH_SUBSCRIPTION_RATE")

# IMAP logins per IMAP account (host, port, user, mailbox), from any address: at most
# PUSH_LOGIN_RATE (10 a minute), so a client stuck in a reconnect loop, or many clients
# with one wrong password, cannot hammer a provider or lock the account out
# (RELIABILITY.md check 21). Keyed on what the edge stored in request.ratelimit_subject.
PUSH_LOGIN = Policy(
    group="pushproxy.login", rate_setting="PUSH_LOGIN_RATE", key="portal.ratelimit.subject_key"
)


def subject_key(group: str, request: HttpRequest) -> str:
    """django-ratelimit key: a value the edge computed (an account key), not the client."""
    subject: str = getattr(request, "ratelimit_subject", "")
    if not subject:
        raise ValueError(f"{group}: set request.ratelimit_subject before enforcing")
    return subject


# Self-service LoginPrep (POST /api/v1/account/login-prep, GET /account/login): each client
# address may fetch LOGIN_PREP_RATE login tokens (60 a minute). Tokens live in the cache
# until used or expired; this keeps one host from filling it. No failure counter below is
# touched by it (RELIABILITY.md check 13: no other action resets a counter).
LOGIN_PREP = Policy(group="accounts.login_prep", rate_setting="LOGIN_PREP_RATE")


@dataclass(frozen=True)
class FailureLimit:
    """Failed attempts counted per client address or per name, in a sliding window.

    django-ratelimit counts every request and offers no way to forgive one, which a login
    limit needs (a success resets the address's count); these counters live in the same
    cache, with the same atomic add/incr and the same fail-closed rule. Its fixed windows
    would also let twice the limit through across a window's turn (ten failures at 12:00:55
    and ten more at 12:01:05): these windows slide (_Counter).
    """

    group: str
    rate_setting: str

    @property
    def rate(self) -> tuple[int, int]:
        """(attempts, seconds) from the setting, e.g. "10/m" -> (10, 60)."""
        return _split_rate(getattr(settings, self.rate_setting))


# Logins (API and page) and SetPassword's current password, per client address: at most
# LOGIN_FAILURES_PER_IP_RATE failures (10 a minute; IPv6 by /64) in any 60 seconds, then 429
# until enough of them have aged out. A successful login forgives that address's failures
# on the name it logged in as (a person who mistyped), and nothing else does: not its
# failures on other names (or a guesser with an account of their own could wipe the slate
# clean between guesses at other people's passwords).
LOGIN_FAILURES_PER_IP = FailureLimit(
    group="accounts.login.ip", rate_setting="LOGIN_FAILURES_PER_IP_RATE"
)
# Bookkeeping, never judged: the address's failures per name, in the same slices, so that a
# success knows which of the address's failures to forgive.
# (credential_attempt derives it from the per-address limit: group "<its group>-name".)
# The same, per account name (whether or not the account exists, so that the answer does not
# tell): at most LOGIN_FAILURES_PER_ACCOUNT_RATE failures (100 an hour) in any hour from all
# addresses together, which bounds a distributed guess at one password. Success forgives
# nothing here but its own attempt. The price: whoever spends 100 guesses an hour on a name
# keeps its web login closed to everyone, its owner too (docs/self-service.md).
LOGIN_FAILURES_PER_ACCOUNT = FailureLimit(
    group="accounts.login.account", rate_setting="LOGIN_FAILURES_PER_ACCOUNT_RATE"
)

# Django admin's login (portal/adminsite.py): failures per client address and per typed
# user name, counted apart from the self-service logins above, so that a success there (any
# mail account holder can log in) forgives nothing here. ADMIN_LOGIN_FAILURES_* in settings.
ADMIN_LOGIN_FAILURES_PER_IP = FailureLimit(
    group="admin.login.ip", rate_setting="ADMIN_LOGIN_FAILURES_PER_IP_RATE"
)
ADMIN_LOGIN_FAILURES_PER_ACCOUNT = FailureLimit(
    group="admin.login.account", rate_setting="ADMIN_LOGIN_FAILURES_PER_ACCOUNT_RATE"
)

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^(\d+)/(\d*)([smhd])$")
# A sliding window is kept as this many slices of the period (10 s slices for a minute,
# 10 min for an hour), each a cache counter.
_SLICES = 6
# Counter keys outlive their window by this much, so that a late increment never finds the
# key gone (an increment of a missing key would create one without expiry).
_KEY_GRACE_SECONDS = 60


def _split_rate(rate: str) -> tuple[int, int]:
    match = _RATE.match(rate)
    if match is None:
        raise ValueError(f"not a rate: {rate!r}")
    count, multiple, unit = match.groups()
    return int(count), _PERIODS[unit] * int(multiple or 1)


def address_key(request: HttpRequest) -> str:
    """The client address as counters see it: IPv4 as is, IPv6 by its /64."""
    address = client_ip(request)
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False).network_address)
    return str(parsed)


class _Counter:
    """The attempts of one FailureLimit and value in a sliding window.

    The window is kept as slices (cache counters, `_SLICES` per period). An attempt is
    counted in the current slice, then judged on the sum of the current slice and the
    `_SLICES` before it: those cover at least the last period, so no period of the rate's
    length ever holds more accepted attempts than the limit, however they fall on the clock
    (a failure weighs for one period plus at most one slice).
    """

    def __init__(self, limit: FailureLimit, value: str, now: float) -> None:
        self.group = limit.group
        self.limit, self.period = limit.rate
        self.slice = max(1, -(-self.period // _SLICES))  # seconds, rounded up
        self.span = -(-self.period // self.slice)  # slices per period, rounded up
        self.now = now
        self.index = int(now) // self.slice
        digest = hashlib.sha256(value.encode()).hexdigest()
        self.prefix = f"fail:{limit.group}:{digest}:"
        self.key = f"{self.prefix}{self.index}"
        self.retry_after = 1
        self.cache = caches[settings.RATELIMIT_USE_CACHE]

    def _window(self) -> list[str]:
        """The keys of the slices judged now, oldest first (the current one last)."""
        return [f"{self.prefix}{i}" for i in range(self.index - self.span, self.index + 1)]

    def add(self) -> int:
        """Count this attempt in the current slice; that slice's count."""
        self.cache.add(self.key, 0, (self.span + 1) * self.slice + _KEY_GRACE_SECONDS)
        return int(self.cache.incr(self.key))

    def count(self) -> int:
        """Count this attempt; the attempts in the window, this one included."""
        current = self.add()
        older = self.cache.get_many(self._window()[:-1])
        counts = [int(older.get(key) or 0) for key in self._window()[:-1]] + [current]
        total = sum(counts)
        if total > self.limit:
            self.retry_after = self._wait(counts)
        return total

    def _wait(self, counts: list[int]) -> int:
        """Seconds until enough slices have left the window for one more attempt.

        The slice at position j (oldest first) leaves when the current slice index is
        index + j + 1. This attempt, refused, is taken back, so it is not in the sum.
        """
        remaining = sum(counts) - 1
        leaves_at = self.now
        for position, count in enumerate(counts):
            if remaining < self.limit:
                break
            remaining -= count
            leaves_at = (self.index + position + 1) * self.slice
        return max(1, math.ceil(leaves_at - self.now))

    def take_back(self) -> None:
        with contextlib.suppress(ValueError):  # the key is gone: nothing to take back
            self.cache.decr(self.key)

    def forgive(self, part: _Counter) -> None:
        """Take away the attempts `part` (a counter of a subset, in the same slices) counted,
        and forget them there."""
        counted = part.cache.get_many(part._window())
        for mine, theirs in zip(self._window(), part._window(), strict=True):
            if int(counted.get(theirs) or 0) > 0:
                with contextlib.suppress(ValueError):  # the slice is gone: nothing to forgive
                    self.cache.decr(mine, int(counted[theirs]))
        part.cache.delete_many(part._window())


@contextlib.contextmanager
def credential_attempt(
    request: HttpRequest,
    *,
    name: str,
    failure: type[Exception],
    forgive_address: bool = True,
    limits: tuple[FailureLimit, FailureLimit] = (
        LOGIN_FAILURES_PER_IP,
        LOGIN_FAILURES_PER_ACCOUNT,
    ),
) -> Iterator[None]:
    """Guard one check of a password against the LOGIN_FAILURES_* limits.

    The attempt is counted as a failure before the password is checked, so concurrent
    attempts cannot overshoot a limit: past either limit RateLimited is raised (with the
    seconds until the window has room again), the attempt is taken back (no password was
    checked, so it is no failure: knocking on a closed door does not keep it closed) and no
    password is checked. If the block raises `failure` (a wrong password) the count stays;
    if it succeeds, the attempt is taken back from `name`'s count and, for a login
    (`forgive_address`), the client address's failures on `name` are forgiven; any other
    error takes the attempt back everywhere. Fails closed: RateLimiterUnavailable when the
    cache cannot count. `limits`: (per address, per name); the self-service ones by default.
    """
    if not getattr(settings, "RATELIMIT_ENABLE", True):
        yield
        return
    now = time.time()
    per_address, per_name = limits
    address, name = address_key(request), name.strip().lower()
    by_address = _Counter(per_address, address, now)
    by_name = _Counter(per_name, name, now)
    # Bookkeeping of the address's failures per name, in the per-address limit's slices.
    per_both = FailureLimit(
        group=f"{per_address.group}-name", rate_setting=per_address.rate_setting
    )
    by_both = _Counter(per_both, f"{address} {name}", now)
    counters = (by_address, by_name, by_both)
    try:
        over = [c for c in (by_address, by_name) if c.count() > c.limit]
        by_both.add()
    except Exception as exc:  # the backend's own errors (redis.RedisError, OSError, ...)
        logger.warning("login failure counters: cache unavailable: %s", type(exc).__name__)
        security_event("rate_limit", outcome="unavailable", limit=per_address.group)
        raise RateLimiterUnavailable() from None
    if over:
        _take_back(counters)
        security_event(
            "rate_limit", outcome="limited", actor=name, limit=over[0].group, window=over[0].period
        )
        wait = max(counter.retry_after for counter in over)
        message = ngettext(
            "Too many failed attempts; try again in %(seconds)d second.",
            "Too many failed attempts; try again in %(seconds)d seconds.",
            wait,
        )
        raise RateLimited(retry_after=wait, message=message % {"seconds": wait})
    try:
        yield
    except failure:
        raise
    except BaseException:
        _take_back(counters)
        raise
    try:
        if forgive_address:
            by_address.forgive(by_both)  # this attempt included
            by_name.take_back()
        else:
            _take_back(counters)
    except Exception as exc:
        # The login stands; the counts merely stay a little high until they age out.
        logger.warning("login failure counters: not updated: %s", type(exc).__name__)


def _take_back(counters: tuple[_Counter, ...]) -> None:
    """This attempt was no failure: out of every counter (as far as the cache answers)."""
    for counter in counters:
        with contextlib.suppress(Exception):
            counter.take_back()


class RateLimited(PortalError):
    """Too many requests from this client in the current window."""

    code = "rate_limited"
    status = HTTPStatus.TOO_MANY_REQUESTS
    default_message = "Too many requests; try again later."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        self.retry_after = retry_after
        default = ngettext(
            "Too many requests; try again in %(seconds)d second.",
            "Too many requests; try again in %(seconds)d seconds.",
            retry_after,
        )
        super().__init__(message or default % {"seconds": retry_after})


class RateLimiterUnavailable(ServiceUnavailable):
    """The counter store (the cache) did not answer: refuse rather than go unlimited."""

    code = "ratelimit_unavailable"
    default_message = gettext_noop("The service is busy; try again shortly.")
    retry_after = 30

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message or gettext(self.default_message), code=code)


def enforce(request: HttpRequest, policy: Policy, *, rate: str | None = None) -> None:
    """Count this request against `policy`; raise RateLimited past the limit.

    `rate` replaces the policy's setting when the caller knows a better one (a value an
    administrator set in admin).

    Fails closed (RELIABILITY.md check 7): when the cache cannot count, RateLimiterUnavailable
    (503) is raised instead of letting the request through.
    Retry-After is the end of django-ratelimit's fixed window (its `_get_window`: aligned to
    the period plus a per-key offset), which `get_usage` reports as `time_left`.
    """
    try:
        usage = get_usage(
            request, group=policy.group, key=policy.key, rate=rate or policy.rate, increment=True
        )
    except Exception as exc:  # the backend's own errors (redis.RedisError, OSError, ...)
        logger.warning("rate limit %s: cache unavailable: %s", policy.group, type(exc).__name__)
        security_event("rate_limit", outcome="unavailable", limit=policy.group)
        raise RateLimiterUnavailable() from None
    if usage is None:  # RATELIMIT_ENABLE is off
        return
    if not usage["should_limit"]:
        return
    if usage["time_left"] < 0:
        # django-ratelimit's own fail-closed answer: the cache gave no count.
        logger.warning("rate limit %s: cache gave no count", policy.group)
        security_event("rate_limit", outcome="unavailable", limit=policy.group)
        raise RateLimiterUnavailable()
    security_event("rate_limit", outcome="limited", limit=policy.group)
    raise RateLimited(retry_after=max(1, int(usage["time_left"])))


def rate_limited(request: HttpRequest, exception: Exception) -> JsonResponse:
    """django-ratelimit's RATELIMIT_VIEW: 429 (its default would be 403) with Retry-After."""
    retry_after = int(getattr(exception, "retry_after", 60))
    response = JsonResponse(
        {"code": "rate_limited", "message": f"Too many requests; retry in {retry_after} s."},
        status=429,
    )
    response["Retry-After"] = str(retry_after)
    return response
