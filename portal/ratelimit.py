"""Rate-limit policies (django-ratelimit) and the 429 answer with Retry-After."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django_ratelimit.core import get_usage

from portal.errors import PortalError, ServiceUnavailable

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
        raise RateLimiterUnavailable() from None
    if usage is None:  # RATELIMIT_ENABLE is off
        return
    if not usage["should_limit"]:
        return
    if usage["time_left"] < 0:
        # django-ratelimit's own fail-closed answer: the cache gave no count.
        logger.warning("rate limit %s: cache gave no count", policy.group)
        raise RateLimiterUnavailable()
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
