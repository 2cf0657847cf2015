"""Rate-limit policies (django-ratelimit) and the 429 answer with Retry-After."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest, JsonResponse
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
# REGISTRATION_PAGE_RATE attempts (30 an hour) in a fixed window: every POST that checks an
# onboarding token, an address or a password counts, accepted or not. Enough for a person
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
    """Failed attempts counted per client address or per name, in fixed windows.

    django-ratelimit counts every request and offers no way to forgive one, which a login
    limit needs (a success resets the address's count); these counters live in the same
    cache, with the same atomic add/incr and the same fail-closed rule.
    """

    group: str
    rate_setting: str

    @property
    def rate(self) -> tuple[int, int]:
        """(attempts, seconds) from the setting, e.g. "10/m" -> (10, 60)."""
        return _split_rate(getattr(settings, self.rate_setting))


# Logins (API and page) and SetPassword's current password, per client address: at most
# LOGIN_FAILURES_PER_IP_RATE failures (10 a minute; IPv6 by /64), then 429 until the
# window ends. A successful login forgives that address's failures, and nothing else does.
LOGIN_FAILURES_PER_IP = FailureLimit(
    group="accounts.login.ip", rate_setting="LOGIN_FAILURES_PER_IP_RATE"
)
# The same, per account name (whether or not the account exists, so that the answer does not
# tell): at most LOGIN_FAILURES_PER_ACCOUNT_RATE failures (100 an hour) from all addresses
# together, which bounds a distributed guess at one password. Success forgives nothing here
# but its own attempt.
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
    """One fixed-window failure counter (a cache key) of a FailureLimit and a value."""

    def __init__(self, limit: FailureLimit, value: str, now: float) -> None:
        self.group = limit.group
        self.limit, self.period = limit.rate
        window = int(now) - int(now) % self.period
        digest = hashlib.sha256(value.encode()).hexdigest()
        self.key = f"fail:{limit.group}:{digest}:{window}"
        self.retry_after = max(1, window + self.period - int(now))
        self.cache = caches[settings.RATELIMIT_USE_CACHE]

    def count(self) -> int:
        self.cache.add(self.key, 0, self.period + _KEY_GRACE_SECONDS)
        return int(self.cache.incr(self.key))

    def take_back(self) -> None:
        with contextlib.suppress(ValueError):  # the key is gone: nothing to take back
            self.cache.decr(self.key)

    def reset(self) -> None:
        self.cache.delete(self.key)


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
    attempts cannot overshoot a limit: past either limit RateLimited is raised and no
    password is checked. If the block raises `failure` (a wrong password) the count stays;
    if it succeeds, the attempt is taken back from `name`'s count and, for a login
    (`forgive_address`), the client address's failures are forgiven (reset); any other
    error takes the attempt back from both. Fails closed: RateLimiterUnavailable when the
    cache cannot count. `limits`: (per address, per name); the self-service ones by default.
    """
    if not getattr(settings, "RATELIMIT_ENABLE", True):
        yield
        return
    now = time.time()
    per_address, per_name = limits
    by_address = _Counter(per_address, address_key(request), now)
    by_name = _Counter(per_name, name.strip().lower(), now)
    try:
        over = [c for c in (by_address, by_name) if c.count() > c.limit]
    except Exception as exc:  # the backend's own errors (redis.RedisError, OSError, ...)
        logger.warning("login failure counters: cache unavailable: %s", type(exc).__name__)
        security_event("rate_limit", outcome="unavailable", limit=per_address.group)
        raise RateLimiterUnavailable() from None
    if over:
        security_event(
            "rate_limit", outcome="limited", actor=name, limit=over[0].group, window=over[0].period
        )
        raise RateLimited(retry_after=max(counter.retry_after for counter in over))
    try:
        yield
    except failure:
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            by_address.take_back()
            by_name.take_back()
        raise
    try:
        if forgive_address:
            by_address.reset()
        else:
            by_address.take_back()
        by_name.take_back()
    except Exception as exc:
        # The login stands; the counts merely stay a little high until the window ends.
        logger.warning("login failure counters: not updated: %s", type(exc).__name__)


class RateLimited(PortalError):
    """Too many requests from this client in the current window."""

    code = "rate_limited"
    status = HTTPStatus.TOO_MANY_REQUESTS
    default_message = "Too many requests; try again later."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message or f"Too many requests; retry in {retry_after} s.")


class RateLimiterUnavailable(ServiceUnavailable):
    """The counter store (the cache) did not answer: refuse rather than go unlimited."""

    code = "ratelimit_unavailable"
    default_message = "The service is busy; try again shortly."
    retry_after = 30


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
