"""Push delivery: what a newMail or reconnect push carries and how it reaches the endpoint.

Sessions report events through `QueueSink` (a job on the `push` queue; run in-process
without Redis); `deliver` (the `pushproxy.deliver_push` task) sends one push through
portal.netguard: Web Push (RFC 8291 + VAPID) where the endpoint gave keys, a plain JSON
POST, or SimplePush's `PUT version=<n>`.

Every push names the subscription's generation and is sent only while that subscription
is active, or for the event that ended it (a reconnect after a loss, an operator's end, a
late login failure): a replaced or deleted subscription is never pushed to.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from portal import netguard
from portal.errors import PortalError
from pushproxy import webpush
from pushproxy.models import EndpointFormat, PushSubscription, Status
from pushproxy.tasks import deliver_push, dispatch

logger = logging.getLogger(__name__)

NEW_MAIL = "newMail"
RECONNECT = "reconnect"
# A 429's Retry-After beyond this is not waited for: the push is given up instead of held
# (new mail an hour late is no news; and a countdown near CELERY_VISIBILITY_TIMEOUT lets
# Redis hand the waiting task to a second worker, a duplicate push).
MAX_RETRY_AFTER = 600


class TransientPushError(Exception):
    """Network trouble or a 5xx from the push service: the task retries with backoff."""


class RetryLater(Exception):
    """429 from the push service: retry after `seconds` (its Retry-After)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        super().__init__(f"retry after {seconds} s")


class QueueSink:
    """The monitor's sink: each event becomes a `pushproxy.deliver_push` job."""

    def new_mail(self, *, subscription: str, generation: int, exists: int, event: str) -> None:
        enqueue_push(
            subscription=subscription,
            generation=generation,
            kind=NEW_MAIL,
            exists=exists,
            event=event,
        )

    def lost(self, *, subscription: str, generation: int, reason: str, event: str) -> None:
        enqueue_push(
            subscription=subscription,
            generation=generation,
            kind=RECONNECT,
            reason=reason,
            event=event,
        )


def enqueue_push(
    *,
    subscription: str,
    generation: int,
    kind: str,
    event: str,
    exists: int | None = None,
    reason: str = "",
    countdown: float = 0.0,
) -> None:
    """Queue one push (queue `push`, CELERY_TASK_ROUTES), sent after `countdown` seconds (the
    reaper's pacing). No database access here: sessions call it from their greenlets, and a
    greenlet must not open a connection."""
    options = {"countdown": countdown} if countdown > 0 and settings.HAS_REDIS else {}
    dispatch(
        deliver_push,
        kwargs={
            "subscription": subscription,
            "generation": generation,
            "kind": kind,
            "exists": exists,
            "reason": reason,
            "event": event,
        },
        **options,
    )


def payload(
    subscription: PushSubscription, *, kind: str, exists: int | None, reason: str, event: str
) -> bytes:
    """The JSON every endpoint receives (encrypted for Web Push). `event` is stable across
    retries, so a client can drop duplicates (RELIABILITY.md invariant 6)."""
    body = {
        "type": kind,
        "subscription": subscription.public_id,
        "mailbox": subscription.mailbox,
        "exists": exists,
        "reason": reason or None,
        "event": event,
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def deliver(
    *,
    subscription: str,
    generation: int,
    kind: str,
    event: str,
    exists: int | None = None,
    reason: str = "",
) -> str:
    """Send one push; the outcome: sent, skipped, gone, rejected, refused, unknown.

    A reconnect for an active subscription first marks it lost. 404/410 end the subscription
    (`gone`) and stop its session. Raises TransientPushError (network, 5xx) and RetryLater
    (429) for the task to retry; other refusals are recorded, not retried.
    """
    sub = PushSubscription.objects.filter(public_id=subscription, pk=generation).first()
    if sub is None:
        return "unknown"
    if not _may_push(sub, kind=kind, reason=reason, event=event):
        return "skipped"
    url, fmt, p256dh, auth = sub.endpoint(kind)
    body = payload(sub, kind=kind, exists=exists, reason=reason, event=event)
    try:
        sent = _send(sub, url=url, fmt=fmt, p256dh=p256dh, auth=auth, body=body)
    except (netguard.EgressRefused, netguard.UnresolvableHost) as exc:
        # The endpoint's name now points somewhere it may not (or nowhere): checked again at
        # every send, never trusted from the time of subscribing (RELIABILITY.md check 19).
        logger.warning("push %s to %s refused: %s", event, sub.public_id, exc.code)
        _count_failure(sub, code=exc.code)
        return "refused"
    except netguard.EgressError as exc:
        _count_failure(sub, code=f"push_{exc.reason}")
        raise TransientPushError(str(exc)) from None
    if 200 <= sent.status < 300:
        PushSubscription.objects.filter(pk=sub.pk).update(
            pushes_sent=F("pushes_sent") + 1, last_event_at=timezone.now(), last_event_type=kind
        )
        return "sent"
    _count_failure(sub, code=f"push_http_{sent.status}")
    if sent.status in (404, 410):
        _endpoint_gone(sub)
        return "gone"
    if sent.status == 429:
        if sent.retry_after > MAX_RETRY_AFTER:
            logger.warning("push %s to %s: Retry-After too long, given up", event, sub.public_id)
            return "rejected"
        raise RetryLater(sent.retry_after)
    if sent.status >= 500:
        raise TransientPushError(f"push service answered {sent.status}")
    logger.warning("push %s to %s rejected with %d", event, sub.public_id, sent.status)
    return "rejected"


def _may_push(sub: PushSubscription, *, kind: str, reason: str, event: str) -> bool:
    if kind == NEW_MAIL:
        return sub.status == Status.ACTIVE
    if sub.final_event == event:
        return True  # the event that ended it: a retry, an operator's end, a late failure
    claimed = PushSubscription.objects.filter(pk=sub.pk, status=Status.ACTIVE).update(
        status=Status.LOST, error=reason[:40], final_event=event, ended_at=timezone.now()
    )
    return bool(claimed)


def _count_failure(sub: PushSubscription, *, code: str) -> None:
    PushSubscription.objects.filter(pk=sub.pk).update(push_failures=F("push_failures") + 1)
    logger.info("push to %s failed: %s", sub.public_id, code)


def _endpoint_gone(sub: PushSubscription) -> None:
    """404/410: the device is gone; end the subscription and its IMAP session."""
    from pushproxy.services import subscriptions  # the services import each other's functions

    ended = (
        PushSubscription.objects.filter(pk=sub.pk)
        .filter(Q(status__in=(Status.PENDING, Status.ACTIVE)))
        .update(status=Status.GONE, error="endpoint_gone", ended_at=timezone.now())
    )
    if ended:
        subscriptions.stop_session(sub)


def _send(
    sub: PushSubscription, *, url: str, fmt: str, p256dh: str, auth: str, body: bytes
) -> _Answer:
    headers: dict[str, str]
    method = "POST"
    if fmt == EndpointFormat.WEBPUSH:
        keys = webpush.SubscriptionKeys.parse(p256dh, auth)
        headers = webpush.encrypted_headers(settings.PUSH_TTL)
        headers.update(
            webpush.vapid_headers(url, key=vapid_key(), subject=settings.PUSHPROXY_VAPID_SUBJECT)
        )
        body = webpush.encrypt(body, keys)
    elif fmt == EndpointFormat.SIMPLEPUSH:
        PushSubscription.objects.filter(pk=sub.pk).update(
            simplepush_version=F("simplepush_version") + 1
        )
        version = PushSubscription.objects.values_list("simplepush_version", flat=True).get(
            pk=sub.pk
        )
        method = "PUT"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        body = f"version={version}".encode("ascii")
    else:
        headers = {"Content-Type": "application/json"}
    headers["User-Agent"] = "mailportal-pushproxy"
    response = netguard.request(
        url,
        method=method,
        body=body,
        headers=headers,
        allow_http=settings.PUSHPROXY_ALLOW_PLAINTEXT,
        connect_timeout=settings.PUSH_CONNECT_TIMEOUT,
        read_timeout=settings.PUSH_READ_TIMEOUT,
        total_timeout=settings.PUSH_TOTAL_TIMEOUT,
        max_bytes=settings.PUSH_MAX_RESPONSE_BYTES,
    )
    return _Answer(response.status, _retry_after(response.headers.get("retry-after", "")))


@dataclass(frozen=True)
class _Answer:
    status: int
    retry_after: int


def _retry_after(value: str) -> int:
    """Retry-After in seconds from now, at least 1 (RFC 9110 10.2.3: seconds or an HTTP
    date); missing or unreadable counts as a minute."""
    value = value.strip()
    if value.isdigit():
        return max(1, int(value[:9]))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 60
    if when.tzinfo is None:
        return 60
    return max(1, math.ceil((when - timezone.now()).total_seconds()))


_vapid_cache: dict[str, object] = {}


def vapid_key() -> ec.EllipticCurvePrivateKey:
    """The VAPID signing key: PUSHPROXY_VAPID_PRIVATE_KEY, else var/vapid_private_key.pem."""
    configured = settings.PUSHPROXY_VAPID_PRIVATE_KEY
    cache_key = configured or "generated"
    key = _vapid_cache.get(cache_key)
    if key is None:
        if configured:
            try:
                key = webpush.load_vapid_key(configured)
            except ValueError as exc:
                raise PortalError(f"PUSHPROXY_VAPID_PRIVATE_KEY is unusable: {exc}") from None
        else:
            path = Path(settings.VAR_DIR) / "vapid_private_key.pem"
            try:
                key = webpush.load_or_create_vapid_key(path)
            except webpush.ExposedKeyFile as exc:
                raise PortalError(f"The VAPID key file is unsafe: {exc}") from None
        _vapid_cache[cache_key] = key
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # noqa: S101
    return key
