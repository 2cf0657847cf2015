"""Push subscriptions (one watched mailbox for one device) and the monitors that hold them.

No password is ever stored here (specs/push-proxy.md, "Credentials"): a subscription keeps
where to log in, what to watch, where to push and what happened, nothing more.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Status(models.TextChoices):
    PENDING = "pending", _("pending (logging in)")
    ACTIVE = "active", _("active")
    LOST = "lost", _("lost (reconnect pushed)")
    FAILED = "failed", _("failed to log in")
    ENDED = "ended", _("ended")
    REPLACED = "replaced", _("replaced by a newer subscription")
    GONE = "gone", _("push endpoint gone")


# The states in which a subscription has (or is about to have) an IMAP session.
LIVE = (Status.PENDING, Status.ACTIVE)


class Mode(models.TextChoices):
    IDLE = "idle", _("IDLE")
    POLL = "poll", _("NOOP polling")


class Security(models.TextChoices):
    TLS = "tls", _("TLS")
    STARTTLS = "starttls", _("STARTTLS")
    NONE = "none", _("none (plaintext)")


class EndpointFormat(models.TextChoices):
    WEBPUSH = "webpush", _("Web Push (RFC 8291, VAPID)")
    JSON = "json", _("plain JSON POST")
    SIMPLEPUSH = "simplepush", _("SimplePush (PUT version=n)")


def username_hash(username: str) -> str:
    """A keyed hash of the IMAP user name: findable by an operator who knows the name,
    unreadable to anyone who only has the database."""
    key = hashlib.sha256(b"pushproxy username\0" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, username.lower().encode("utf-8"), hashlib.sha256).hexdigest()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_public_id() -> str:
    return "ps_" + secrets.token_urlsafe(16)


class PushSubscriptionQuerySet(models.QuerySet["PushSubscription"]):
    def live(self) -> PushSubscriptionQuerySet:
        return self.filter(status__in=LIVE)

    def for_slot(self, account_key: str, client_id: str) -> PushSubscriptionQuerySet:
        return self.filter(account_key=account_key, client_id=client_id)


class PushSubscription(models.Model):
    """One device's request to hear about new mail in one IMAP mailbox.

    Its primary key doubles as the *generation* of its (account, clientId) slot: a newer
    subscription for the same slot has a larger id and replaces the older one.
    """

    public_id = models.CharField(max_length=40, unique=True, default=new_public_id, editable=False)
    # SHA-256 of the bearer token; the token itself was shown once, in the 201/202 answer.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    # SHA-256 of lower-cased host, port, lower-cased user name and mailbox (pushproxy.imap).
    account_key = models.CharField(max_length=64, db_index=True, editable=False)
    client_id = models.CharField("client id", max_length=200)

    host = models.CharField("IMAP host", max_length=253)
    port = models.PositiveIntegerField("IMAP port")
    security = models.CharField(max_length=10, choices=Security.choices)
    # Empty in privacy mode (PUSHPROXY_PRIVACY): then only the keyed hash below is kept.
    username = models.CharField("IMAP user", max_length=320, blank=True)
    username_hash = models.CharField(max_length=64, db_index=True, editable=False)
    mailbox = models.CharField(max_length=200, default="INBOX")

    new_mail_url = models.CharField("newMail endpoint", max_length=2000)
    new_mail_format = models.CharField(max_length=12, choices=EndpointFormat.choices)
    new_mail_p256dh = models.CharField(max_length=100, blank=True, editable=False)
    new_mail_auth = models.CharField(max_length=40, blank=True, editable=False)
    reconnect_url = models.CharField("reconnect endpoint", max_length=2000)
    reconnect_format = models.CharField(max_length=12, choices=EndpointFormat.choices)
    reconnect_p256dh = models.CharField(max_length=100, blank=True, editable=False)
    reconnect_auth = models.CharField(max_length=40, blank=True, editable=False)

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    mode = models.CharField(max_length=4, choices=Mode.choices, blank=True)
    # The monitor holding (or asked to hold) the IMAP session: MonitorWorker.worker_id.
    monitor = models.CharField(max_length=100, blank=True)
    # True while the API request that created it still waits for the login outcome; a
    # late outcome (after the 202) is pushed instead.
    awaited = models.BooleanField(default=True)
    # Last error code: the login's (imap_auth_failed, ...) or the session's end (bye, eof, ...).
    error = models.CharField(max_length=40, blank=True)
    # The event id of the push that announced the end (reconnect): its retries may still
    # be sent after the subscription stopped being active, nothing else may.
    final_event = models.CharField(max_length=32, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    last_event_type = models.CharField(max_length=12, blank=True)
    pushes_sent = models.PositiveIntegerField(default=0)
    push_failures = models.PositiveIntegerField(default=0)
    # SimplePush's version=<n>, increasing with every push to such an endpoint.
    simplepush_version = models.PositiveBigIntegerField(default=0)

    objects = PushSubscriptionQuerySet.as_manager()

    class Meta:
        constraints = [
            # Replace, never add: at most one active session per (account, device).
            models.UniqueConstraint(
                fields=["account_key", "client_id"],
                condition=Q(status="active"),
                name="push_one_active_per_client",
            ),
            models.CheckConstraint(
                condition=Q(port__gte=1) & Q(port__lte=65535), name="push_port_range"
            ),
        ]
        indexes = [models.Index(fields=["status", "host"], name="push_status_host")]
        ordering = ["-id"]

    def __str__(self) -> str:
        who = self.username or f"user#{self.username_hash[:8]}"
        return f"{who}@{self.host}/{self.mailbox} ({self.client_id}, {self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE

    @property
    def generation(self) -> int:
        return self.pk

    def endpoint(self, kind: str) -> tuple[str, str, str, str]:
        """(url, format, p256dh, auth) of the newMail or reconnect endpoint."""
        if kind == "newMail":
            return self.new_mail_url, self.new_mail_format, self.new_mail_p256dh, self.new_mail_auth
        return (
            self.reconnect_url,
            self.reconnect_format,
            self.reconnect_p256dh,
            self.reconnect_auth,
        )

    def endpoint_host(self, kind: str) -> str:
        return urlsplit(self.endpoint(kind)[0]).hostname or ""


class MonitorState(models.TextChoices):
    RUNNING = "running", _("running")
    STOPPING = "stopping", _("stopping")
    STOPPED = "stopped", _("stopped")
    # Its leases lapsed (killed, machine lost): the reaper handed its shards on.
    LOST = "lost", _("lost (reaped)")


class MonitorWorkerQuerySet(models.QuerySet["MonitorWorker"]):
    def alive(self) -> MonitorWorkerQuerySet:
        """Running monitors whose heartbeat is recent enough to hand them sessions."""
        horizon = timezone.now() - timedelta(seconds=settings.PUSHPROXY_MONITOR_STALE_SECONDS)
        return self.filter(state=MonitorState.RUNNING, heartbeat_at__gte=horizon)


class MonitorWorker(models.Model):
    """A `run_push_monitor` process: its command queue and its heartbeat."""

    worker_id = models.CharField(max_length=100, unique=True)
    # The Celery queue its watch/stop/drain commands go to: idle.<worker_id>.
    queue = models.CharField(max_length=120)
    hostname = models.CharField(max_length=253)
    pid = models.PositiveIntegerField()
    state = models.CharField(
        max_length=10, choices=MonitorState.choices, default=MonitorState.RUNNING
    )
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    sessions = models.PositiveIntegerField(default=0)
    # Shard leases held at the last renewal (of 16,384; pushproxy.fleet).
    shards = models.PositiveIntegerField(default=0)

    objects = MonitorWorkerQuerySet.as_manager()

    class Meta:
        ordering = ["worker_id"]

    def __str__(self) -> str:
        return f"{self.worker_id} ({self.state}, {self.sessions} sessions, {self.shards} shards)"
