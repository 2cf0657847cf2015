"""Creating, reading and ending push subscriptions, and recording what their login did.

The API side (`subscribe`, `get_subscription`, `end_subscription`) and the monitor side
(`record_active`, `record_failure`) meet on the subscription row, locked with
SELECT ... FOR UPDATE where both may write it: the API settles its answer once the login
outcome is recorded or its wait runs out (202), and a late failure is then pushed instead.
A pending subscription whose login never came (nobody took the hand-off) fails after
PUSHPROXY_PENDING_SECONDS (`expire_pending`): nothing stays pending for ever.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import EagerResult
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal import netguard
from portal.errors import Conflict, InvalidInput, NotFound, PortalError
from pushproxy import imap, sealing
from pushproxy.models import (
    LIVE,
    EndpointFormat,
    PushSubscription,
    Status,
    token_hash,
    username_hash,
)
from pushproxy.services import monitors
from pushproxy.services.delivery import RECONNECT, enqueue_push
from pushproxy.tasks import dispatch
from pushproxy.tasks import stop as stop_task
from pushproxy.tasks import watch as watch_task

logger = logging.getLogger(__name__)


class LoginFailed(PortalError):
    """The IMAP login (or opening the mailbox) failed; the code says how."""


# The API's answer for each outcome code a login can end with (specs/push-proxy.md).
LOGIN_ERRORS: dict[str, tuple[HTTPStatus, str]] = {
    "imap_auth_failed": (HTTPStatus.UNAUTHORIZED, "The IMAP server refused the login."),
    "imap_unreachable": (HTTPStatus.BAD_GATEWAY, "The IMAP server could not be reached."),
    "imap_tls_failed": (HTTPStatus.BAD_GATEWAY, "TLS with the IMAP server failed."),
    "imap_error": (HTTPStatus.BAD_GATEWAY, "The IMAP server answered in an unexpected way."),
    "mailbox_not_found": (HTTPStatus.UNPROCESSABLE_ENTITY, "There is no such mailbox."),
    "egress_refused": (
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The IMAP host is not a public internet address.",
    ),
    "too_many_subscriptions": (
        HTTPStatus.CONFLICT,
        "This IMAP account has the most subscriptions allowed.",
    ),
    "superseded": (HTTPStatus.CONFLICT, "A newer subscription for this device replaced it."),
    "imap_host_busy": (
        HTTPStatus.SERVICE_UNAVAILABLE,
        "Too many logins to this IMAP server right now; try again shortly.",
    ),
    "poll_cap_reached": (
        HTTPStatus.SERVICE_UNAVAILABLE,
        "This IMAP server has no IDLE and the monitor polls the most sessions it allows there.",
    ),
    "push_unavailable": (
        HTTPStatus.SERVICE_UNAVAILABLE,
        "The push monitor cannot take the session now; try again shortly.",
    ),
}


# Why a pending subscription failed without a login outcome: the hand-off could not be
# sent, or nobody ran it before PUSHPROXY_PENDING_SECONDS (specs/push-proxy.md's 503).
HANDOFF_FAILED = "push_unavailable"


def login_error(code: str) -> LoginFailed:
    status, message = LOGIN_ERRORS.get(code, LOGIN_ERRORS["imap_error"])
    error = LoginFailed(message, code=code if code in LOGIN_ERRORS else "imap_error")
    error.status = status
    return error


class PlaintextRefused(InvalidInput):
    # 422 like egress_refused: a well-formed request this server's policy refuses.
    code = "plaintext_refused"
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    default_message = "This server accepts only TLS or STARTTLS for IMAP."


class TooManySubscriptions(Conflict):
    code = "too_many_subscriptions"
    default_message = "This IMAP account has the most subscriptions allowed."


@dataclass(frozen=True)
class Endpoint:
    url: str
    format: str
    p256dh: str = ""
    auth: str = ""


@dataclass(frozen=True)
class Subscribed:
    subscription: PushSubscription
    token: str

    @property
    def pending(self) -> bool:
        return self.subscription.status == Status.PENDING


# --- API side -------------------------------------------------------------------------------


def subscribe(
    *,
    mailbox: imap.Mailbox,
    password: sealing.Secret,
    new_mail: Endpoint,
    reconnect: Endpoint,
    client_id: str,
) -> Subscribed:
    """Watch `mailbox` for the device `client_id`; wait a few seconds for the login.

    Checks first (nothing written if any fails): plaintext only with
    PUSHPROXY_ALLOW_PLAINTEXT (`plaintext_refused`); both endpoints and the IMAP host pass
    portal.netguard (`egress_refused`, `unresolvable_host`); fewer than
    PUSHPROXY_MAX_PER_ACCOUNT other devices on the account (`too_many_subscriptions`); a
    live monitor (`push_unavailable`, 503). Then writes a pending row, hands the sealed
    credentials to the owning monitor's `watch` and waits PUSHPROXY_LOGIN_WAIT_SECONDS.

    Returns the active subscription (or a pending one if the wait ran out: the outcome is
    then recorded and, if a failure, pushed; `expire_pending` fails it if none comes). A
    failed login raises LoginFailed with its code and leaves no row behind, and so does a
    hand-off the broker refuses (`push_unavailable`, 503). A second subscription for the
    same slot replaces the first once its login succeeds.
    """
    if mailbox.security == imap.PLAIN and not settings.PUSHPROXY_ALLOW_PLAINTEXT:
        raise PlaintextRefused()
    for endpoint in (new_mail, reconnect):
        netguard.check_url(endpoint.url, allow_http=settings.PUSHPROXY_ALLOW_PLAINTEXT)
    addresses = netguard.resolve(mailbox.host, mailbox.port)
    netguard.check_port(addresses, mailbox.port, netguard.IMAP_PORTS)
    key = mailbox.account_key
    _check_cap(key, client_id)
    owner = monitors.owner_for(key)

    token = secrets.token_urlsafe(32)
    handed: dict[str, Any] = {}
    with transaction.atomic():
        sub = PushSubscription.objects.create(
            token_hash=token_hash(token),
            account_key=key,
            client_id=client_id,
            host=mailbox.host.lower(),
            port=mailbox.port,
            security=mailbox.security,
            username="" if settings.PUSHPROXY_PRIVACY else mailbox.username,
            username_hash=username_hash(mailbox.username),
            mailbox=mailbox.mailbox,
            new_mail_url=new_mail.url,
            new_mail_format=new_mail.format,
            new_mail_p256dh=new_mail.p256dh,
            new_mail_auth=new_mail.auth,
            reconnect_url=reconnect.url,
            reconnect_format=reconnect.format,
            reconnect_p256dh=reconnect.p256dh,
            reconnect_auth=reconnect.auth,
            monitor=owner.worker_id,
        )
        sealed = sealing.seal(
            username=mailbox.username,
            password=password,
            context=seal_context(sub.public_id, sub.pk, owner.queue),
        )
        transaction.on_commit(lambda: handed.update(result=_hand_off(sub, mailbox, owner, sealed)))
    if "result" in handed and handed["result"] is None:
        # The broker refused the hand-off: no login will come; answer 503 now.
        record_failure(public_id=sub.public_id, generation=sub.pk, code=HANDOFF_FAILED)
    _wait(handed.get("result"))
    return _settle(sub.pk, token)


def seal_context(public_id: str, generation: int, queue: str | None) -> str:
    return f"{public_id}|{generation}|{queue or monitors.EMBEDDED}"


def _check_cap(account_key: str, client_id: str) -> None:
    others = (
        PushSubscription.objects.live()
        .filter(account_key=account_key)
        .exclude(client_id=client_id)
        .values("client_id")
        .distinct()
        .count()
    )
    if others >= settings.PUSHPROXY_MAX_PER_ACCOUNT:
        raise TooManySubscriptions()


def _hand_off(
    sub: PushSubscription, mailbox: imap.Mailbox, owner: monitors.Owner, sealed: str
) -> Any:
    """The `watch` command to the owner's queue: 30 s to live, like the seal inside it."""
    kwargs = {
        "subscription": sub.public_id,
        "generation": sub.pk,
        "host": mailbox.host,
        "port": mailbox.port,
        "security": mailbox.security,
        "mailbox": mailbox.mailbox,
        "client_id": sub.client_id,
        "account_key": sub.account_key,
        "queue": owner.queue,
        "sealed": sealed,
    }
    options: dict[str, Any] = {
        "expires": sealing.DEFAULT_TTL,
        # What Celery logs and shows (events, Flower) instead of the arguments.
        "argsrepr": "()",
        "kwargsrepr": repr({"subscription": sub.public_id, "generation": sub.pk}),
    }
    if owner.queue is not None:
        options["queue"] = owner.queue
    try:
        return dispatch(watch_task, kwargs=kwargs, **options)
    except Exception:
        # The broker did not take it: `subscribe` records the failure (503).
        logger.exception("handing subscription %s to its monitor failed", sub.public_id)
        return None


def _wait(result: Any) -> None:
    if result is None or isinstance(result, EagerResult):
        return  # eager (no Redis): the login ran in the hand-off itself
    try:
        result.get(timeout=settings.PUSHPROXY_LOGIN_WAIT_SECONDS, propagate=False)
    except CeleryTimeout:
        return
    result.forget()  # the outcome is in the database; nothing stays in Redis


def _settle(pk: int, token: str) -> Subscribed:
    """The API's answer from the recorded outcome; a pending row is marked no longer awaited."""
    with transaction.atomic():
        sub = PushSubscription.objects.select_for_update().get(pk=pk)
        if sub.status == Status.PENDING:
            sub.awaited = False
            sub.save(update_fields=["awaited"])
            return Subscribed(sub, token)
        if sub.status == Status.ACTIVE:
            return Subscribed(sub, token)
        code = sub.error or "imap_error"
        if sub.status == Status.REPLACED:
            code = "superseded"
        sub.delete()  # a failed login keeps nothing
    raise login_error(code)


def get_subscription(*, public_id: str, token: str) -> PushSubscription:
    """The subscription this bearer token opens; NotFound for a wrong id or token, or one
    that was replaced, ended or whose endpoint is gone (the id "stops working"). One still
    pending past its deadline is failed first (`expire_pending`), so GET never shows a
    pending that cannot end."""
    sub = PushSubscription.objects.filter(public_id=public_id).first()
    if sub is None or not hmac.compare_digest(sub.token_hash, token_hash(token)):
        raise NotFound("No such subscription.")
    if sub.status == Status.PENDING and sub.created_at < _pending_horizon(timezone.now()):
        expire_pending(pk=sub.pk)
        sub.refresh_from_db()
    if sub.status in (Status.REPLACED, Status.ENDED, Status.GONE):
        raise NotFound("No such subscription.")
    if sub.status == Status.FAILED and sub.awaited:
        raise NotFound("No such subscription.")
    return sub


def end_subscription(*, public_id: str, token: str) -> None:
    """DELETE: the session logs out within seconds; no reconnect push. NotFound as for GET."""
    sub = get_subscription(public_id=public_id, token=token)
    with transaction.atomic():
        ended = PushSubscription.objects.filter(pk=sub.pk, status=sub.status).update(
            status=Status.ENDED, error="deleted", ended_at=timezone.now()
        )
        if ended and sub.status in LIVE:
            transaction.on_commit(lambda: stop_session(sub))
    if not ended:
        raise NotFound("No such subscription.")


def delete_subscriptions(queryset: Any) -> int:
    """Operator's delete (admin): the rows go; the sessions of live ones log out, without a
    push, as for the API's DELETE. Returns the number deleted."""
    with transaction.atomic():
        live = list(queryset.filter(status__in=LIVE).only("public_id", "monitor"))
        for sub in live:
            transaction.on_commit(functools.partial(stop_session, sub))
        deleted, _by_model = queryset.delete()
    return int(deleted)


def end_subscriptions(queryset: Any, *, reason: str = "ended_by_operator") -> tuple[int, int]:
    """Operator's end (admin): live ones end, their sessions log out, and each gets a
    reconnect push with `reason`. Returns (ended, skipped: not live)."""
    selected = queryset.count()
    event = uuid.uuid4().hex  # one batch: the subscription id tells the pushes apart
    with transaction.atomic():
        PushSubscription.objects.filter(pk__in=queryset.values("pk"), status__in=LIVE).update(
            status=Status.ENDED, error=reason[:40], final_event=event, ended_at=timezone.now()
        )
        ended = list(PushSubscription.objects.filter(final_event=event))
        for sub in ended:
            transaction.on_commit(functools.partial(_end_and_notify, sub, event, reason))
    return len(ended), selected - len(ended)


def expire_pending(*, now: datetime | None = None, pk: int | None = None) -> int:
    """Fail the subscriptions pending longer than PUSHPROXY_PENDING_SECONDS (all, or the
    one with `pk`); the count.

    Their login will not come: the hand-off expired unconsumed (no monitor ran it, or the
    one it was sent to died). Each becomes `failed` with error `push_unavailable` and gets
    a reconnect push with that reason, so the app that was answered 202 subscribes again.
    A login finishing later finds the row no longer pending and logs out (record_active).
    """
    now = now or timezone.now()
    stale = PushSubscription.objects.filter(
        status=Status.PENDING, created_at__lt=_pending_horizon(now)
    )
    if pk is not None:
        stale = stale.filter(pk=pk)
    event = uuid.uuid4().hex  # one batch: the subscription id tells the pushes apart
    with transaction.atomic():
        count = stale.update(
            status=Status.FAILED,
            error=HANDOFF_FAILED,
            final_event=event,
            ended_at=now,
            awaited=False,
        )
        if count:
            for public_id, generation in PushSubscription.objects.filter(
                final_event=event
            ).values_list("public_id", "pk"):
                transaction.on_commit(
                    functools.partial(
                        enqueue_push,
                        subscription=public_id,
                        generation=generation,
                        kind=RECONNECT,
                        reason=HANDOFF_FAILED,
                        event=event,
                    )
                )
    if count:
        logger.warning("%d pending push subscriptions expired without a login", count)
    return count


def _pending_horizon(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.PUSHPROXY_PENDING_SECONDS)


def _end_and_notify(sub: PushSubscription, event: str, reason: str) -> None:
    stop_session(sub)
    enqueue_push(
        subscription=sub.public_id, generation=sub.pk, kind=RECONNECT, reason=reason, event=event
    )


def stop_session(sub: PushSubscription) -> None:
    """Ask the owning monitor to log the session out (no push)."""
    if not settings.HAS_REDIS:
        dispatch(stop_task, kwargs={"subscription": sub.public_id})  # eager: this process
    elif sub.monitor and sub.monitor != monitors.EMBEDDED:
        dispatch(
            stop_task,
            kwargs={"subscription": sub.public_id},
            queue=monitors.queue_name(sub.monitor),
            expires=300,
        )


# --- monitor side ---------------------------------------------------------------------------


def record_active(
    *, public_id: str, generation: int, account_key: str, client_id: str, mode: str
) -> str:
    """The login succeeded: "active" (older subscriptions of the slot are now replaced),
    "superseded" (a newer one is active already) or "gone" (deleted while logging in, or
    the row is not of this slot).

    Two UPDATEs in one transaction, on every login of a monitor (its hottest write): the
    older live rows of the slot first (the one-active-per-client index is checked row by
    row), then this row if it is still pending; if it is not, the first is rolled back.
    """
    try:
        with transaction.atomic():
            now = timezone.now()
            PushSubscription.objects.for_slot(account_key, client_id).filter(
                pk__lt=generation, status__in=LIVE
            ).update(status=Status.REPLACED, error="replaced", ended_at=now)
            activated = (
                PushSubscription.objects.for_slot(account_key, client_id)
                .filter(pk=generation, public_id=public_id, status=Status.PENDING)
                .update(status=Status.ACTIVE, mode=mode, error="", activated_at=now)
            )
            if not activated:
                raise _NotPending()
    except _NotPending:
        return "gone"
    except IntegrityError:
        # push_one_active_per_client: a newer subscription of the slot is active already.
        record_failure(public_id=public_id, generation=generation, code="superseded")
        return "superseded"
    return "active"


class _NotPending(Exception):
    """record_active: the row left `pending` (or never was this slot's): undo, "gone"."""


def record_failure(*, public_id: str, generation: int, code: str) -> None:
    """The login failed (or the monitor refused it). If the API stopped waiting (202), the
    outcome is pushed to the reconnect endpoint with `code` as the reason."""
    event = uuid.uuid4().hex
    with transaction.atomic():
        sub = (
            PushSubscription.objects.select_for_update()
            .filter(pk=generation, public_id=public_id)
            .first()
        )
        if sub is None or sub.status != Status.PENDING:
            return
        sub.status = Status.REPLACED if code == "superseded" else Status.FAILED
        sub.error = code[:40]
        sub.final_event = event
        sub.ended_at = timezone.now()
        sub.save(update_fields=["status", "error", "final_event", "ended_at"])
        if not sub.awaited and code != "superseded":
            transaction.on_commit(
                lambda: enqueue_push(
                    subscription=public_id,
                    generation=generation,
                    kind=RECONNECT,
                    reason=code,
                    event=event,
                )
            )


def record_refused_after_login(*, public_id: str, generation: int, code: str) -> None:
    """The manager refused a session already recorded active (a race lost to a newer login
    of the same slot, or a drain): the subscription did not start after all."""
    PushSubscription.objects.filter(
        pk=generation, public_id=public_id, status=Status.ACTIVE
    ).update(
        status=Status.REPLACED if code == "superseded" else Status.FAILED,
        error=code[:40],
        ended_at=timezone.now(),
    )


def endpoint_format(url: str, keys: dict[str, str] | None, fmt: str | None) -> Endpoint:
    """An endpoint as the API describes it: keys make it Web Push; "simplepush" PUTs."""
    if keys:
        return Endpoint(url, EndpointFormat.WEBPUSH, keys["p256dh"], keys["auth"])
    if fmt == EndpointFormat.SIMPLEPUSH:
        return Endpoint(url, EndpointFormat.SIMPLEPUSH)
    return Endpoint(url, EndpointFormat.JSON)
