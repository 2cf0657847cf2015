"""Mail accounts, their third-party IDs and self-service sessions, reserved names and
registration idempotency records."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from providers.models import OnboardingToken, Provider, ProviderDomain


class AccountStatus(models.TextChoices):
    ACTIVE = "active", _("active")
    DISABLED = "disabled", _("disabled")
    PENDING = "pending", _("pending verification")
    APPROVAL = "approval", _("awaiting approval")


class MailboxState(models.TextChoices):
    """Where the account stands on the mail server (accounts.services.accounts).

    The row is committed as `creating` before the mailbox backend is asked, and becomes
    `ready` once the mailbox exists; deletion marks it `deleting` before the mailbox goes.
    So a crash at any point leaves a row that says what was under way, never a mailbox
    nobody knows of, and the reconciler (accounts.services.reconcile) finishes the job.
    Only `ready` accounts authenticate.
    """

    CREATING = "creating", _("being created")
    READY = "ready", _("ready")
    DELETING = "deleting", _("being deleted")


class CreatedVia(models.TextChoices):
    HOSTED_PAGE = "hosted", _("hosted registration page")
    API = "api", _("registration API")
    QR_TOKEN = "qr", _("QR onboarding token")
    ADMIN = "admin", _("administrator")


class MailAccountQuerySet(models.QuerySet["MailAccount"]):
    def with_address(self, address: str) -> MailAccountQuerySet:
        """The account (zero or one) of a normalised address local@domain (A-label)."""
        local, _at, domain = address.rpartition("@")
        return self.filter(local_part=local.lower(), domain__name=domain.lower())

    def interrupted(self, state: MailboxState) -> MailAccountQuerySet:
        """Rows left in `state` ("creating", "deleting") longer than any request takes."""
        cutoff = timezone.now() - timedelta(seconds=settings.MAILBOX_RECONCILE_GRACE)
        return self.filter(mailbox_state=state, updated_at__lt=cutoff)

    def lifetime_over(self, at: datetime) -> MailAccountQuerySet:
        """Temporary accounts whose lifetime ended before `at`."""
        return self.filter(expires_at__isnull=False, expires_at__lte=at)

    def active(self) -> MailAccountQuerySet:
        """Accounts that may log in: active, with their mailbox ready."""
        return self.filter(status=AccountStatus.ACTIVE, mailbox_state=MailboxState.READY)


class MailAccount(models.Model):
    """A mailbox of a hosted provider. The mail server reads it (see dovecot_users view)."""

    domain = models.ForeignKey(ProviderDomain, on_delete=models.PROTECT, related_name="accounts")
    # Stored lower-case (normalised by accounts.services.names): the address is unique
    # case-insensitively, and the constraint below is on the lower-cased expression as well.
    local_part = models.CharField("user name", max_length=64)
    # A Django password-hasher string (argon2id, see accounts.passwords); never shown.
    password = models.CharField(max_length=255, editable=False)
    full_name = models.CharField(max_length=200, blank=True)
    quota_mb = models.PositiveIntegerField(
        "quota (MB)", null=True, blank=True, help_text=_("Empty: the provider's quota.")
    )
    status = models.CharField(
        max_length=10, choices=AccountStatus.choices, default=AccountStatus.ACTIVE
    )
    mailbox_state = models.CharField(
        max_length=10, choices=MailboxState.choices, default=MailboxState.CREATING
    )
    created_via = models.CharField(max_length=10, choices=CreatedVia.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    password_changed_at = models.DateTimeField(default=timezone.now)
    # Set in the same transaction as the row, so a token's uses and its accounts agree
    # (RELIABILITY.md invariant 3); SET_NULL: deleting a token keeps its accounts.
    onboarding_token = models.ForeignKey(
        OnboardingToken,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="accounts",
    )
    expires_at = models.DateTimeField(
        "lifetime ends",
        null=True,
        blank=True,
        help_text=_(
            "Temporary accounts: disabled at this moment and deleted a grace period later "
            "(accounts.services.lifetime). Empty: permanent."
        ),
    )

    objects = MailAccountQuerySet.as_manager()

    class Meta:
        ordering = ["domain__name", "local_part"]
        constraints = [
            models.UniqueConstraint(
                Lower("local_part"), "domain", name="mailaccount_address_unique_ci"
            ),
            models.CheckConstraint(
                condition=models.Q(local_part=Lower("local_part")),
                name="mailaccount_local_part_lowercase",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=AccountStatus.values), name="mailaccount_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(created_via__in=CreatedVia.values),
                name="mailaccount_created_via_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(mailbox_state__in=MailboxState.values),
                name="mailaccount_mailbox_state_valid",
            ),
        ]
        indexes = [
            # The reconciler's look-up of unfinished creations and deletions.
            models.Index(
                fields=["mailbox_state", "updated_at"],
                name="mailaccount_unfinished",
                condition=~models.Q(mailbox_state="ready"),
            ),
        ]

    def __str__(self) -> str:
        return self.address

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain.name}"

    @property
    def provider(self) -> Provider:
        return self.domain.provider

    @property
    def effective_quota_mb(self) -> int:
        return self.quota_mb if self.quota_mb is not None else self.domain.provider.quota_mb


class ThirdPartyKind(models.TextChoices):
    EMAIL = "email", _("email address")
    MSISDN = "msisdn", _("phone number")


class ThirdPartyID(models.Model):
    """An email address or phone number of the account's owner (for recovery, verification)."""

    account = models.ForeignKey(MailAccount, on_delete=models.CASCADE, related_name="third_pids")
    kind = models.CharField(max_length=10, choices=ThirdPartyKind.choices)
    # Normalised (accounts.services.names): lower-case address, or E.164 "+<digits>".
    value = models.CharField(max_length=254)
    verified_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["account", "kind", "value"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "value"], name="thirdpartyid_unique"),
            models.CheckConstraint(
                condition=models.Q(kind__in=ThirdPartyKind.values), name="thirdpartyid_kind_valid"
            ),
        ]
        verbose_name = "third-party ID"

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class VerificationCode(models.Model):
    """A code sent to a third-party ID; only its hash is kept."""

    third_pid = models.OneToOneField(
        ThirdPartyID, on_delete=models.CASCADE, related_name="verification"
    )
    code_hash = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)

    def __str__(self) -> str:
        return f"verification of {self.third_pid}"


class AccountSessionQuerySet(models.QuerySet["AccountSession"]):
    def unexpired(self, at: datetime | None = None) -> AccountSessionQuerySet:
        """Sessions whose idle and absolute limits have not passed (at `at`, default now)."""
        return self.filter(expires_at__gt=at or timezone.now())

    def active_for(self, account: MailAccount) -> AccountSessionQuerySet:
        """The account's sessions that still let their holder in, most recently used first."""
        return self.unexpired().filter(account_id=account.pk).order_by("-last_used_at", "-pk")


class AccountSession(models.Model):
    """A self-service login of an account (specs/account-api.md; accounts.services.sessions).

    Only the SHA-256 of the session token is stored: the token itself exists in the
    holder's cookie (or the loginPayload of an in-band registration) and nowhere else. The
    CSRF value is derived from the token, so it needs no column. `expires_at` is the
    earlier of "idle time after the last use" and "maximum age after creation"; use moves
    it forward (accounts.services.sessions.authenticate).
    """

    account = models.ForeignKey(MailAccount, on_delete=models.CASCADE, related_name="sessions")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    user_agent = models.CharField(max_length=300, blank=True)
    ip = models.GenericIPAddressField("IP address", null=True, blank=True)

    objects = AccountSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-last_used_at"]
        indexes = [
            # The periodic purge of expired rows (accounts.services.sessions.purge_sessions).
            models.Index(fields=["expires_at"], name="accountsession_expires"),
        ]

    def __str__(self) -> str:
        return f"session {self.pk} of {self.account}"

    def is_valid(self, *, at: datetime) -> bool:
        return self.expires_at > at


class ReservedName(models.Model):
    """A local part nobody may register, on any provider (besides the built-in list)."""

    name = models.CharField(max_length=64, unique=True)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(name=Lower("name")), name="reservedname_lowercase"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.name = (self.name or "").strip().lower()


class RegistrationRequest(models.Model):
    """Idempotency record of one in-band registration (specs/inband-registration.md).

    Holds a hash of the request (never the password itself) and the first answer, which is
    replayed to a retry with the same key within the retention period.
    """

    class State(models.TextChoices):
        RUNNING = "running"
        DONE = "done"

    key = models.CharField(max_length=200, unique=True)
    request_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    status_code = models.PositiveSmallIntegerField(null=True)
    response: models.JSONField[Any, Any] = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"registration {self.key} ({self.state})"


class SheetJob(models.Model):
    """A batch onboarding sheet: built by a Celery task, downloaded once, gone after an hour.

    The finished PDF holds passwords (inside its DCLOGIN codes), so `content` is encrypted
    (accounts.services.sheets) and the row is deleted by its one download or by the hourly
    purge, whichever comes first.
    """

    class State(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        DONE = "done", _("ready to download")
        FAILED = "failed", _("failed")

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    account_ids: models.JSONField[list[int], list[int]] = models.JSONField(default=list)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # What went wrong, per address, for the administrator; never a password.
    problems = models.TextField(blank=True)
    content = models.BinaryField(null=True, editable=False)
    # The run that holds the job (accounts.services.sheets): each run's writes are
    # conditional on its own id, so a run whose job was taken over writes nothing more.
    attempt = models.UUIDField(null=True, blank=True, editable=False)
    # Runs started so far; the sweep gives up on a job whose runs keep dying.
    starts = models.PositiveSmallIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("onboarding sheet")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(done__lte=models.F("total") - models.F("failed")),
                name="sheetjob_progress_within_total",
            ),
        ]

    def __str__(self) -> str:
        return f"sheet {self.pk} ({self.total} accounts, {self.state})"

    @property
    def percent(self) -> int:
        return 100 if not self.total else round(100 * (self.done + self.failed) / self.total)
