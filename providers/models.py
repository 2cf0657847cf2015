"""Providers, their domains, their server settings and the suggestion-client allow-list."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import re
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models.functions import Coalesce, Lower
from django.utils.translation import gettext_lazy as _

from providers import autoconfig
from providers.domains import DomainError, to_ascii, to_unicode

USERNAME_PLACEHOLDERS = ("%EMAILADDRESS%", "%EMAILLOCALPART%", "%EMAILDOMAIN%")
REGISTRATION_PLACEHOLDERS = ("{firstname}", "{lastname}", "{email}")
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
# Ports where TLS starts at once (IMAPS, POP3S, SMTPS/submissions); STARTTLS or plain there
# cannot work with any client, so the admin is told rather than the users.
_IMPLICIT_TLS_PORTS = {993: "IMAPS", 995: "POP3S", 465: "SMTP submission over TLS"}


class HostNameField(models.CharField):
    """A domain or host name, normalised to lower-case A-labels when the model is cleaned."""

    def __init__(self, *args: Any, what: str = "domain", **kwargs: Any) -> None:
        self.what = what
        kwargs.setdefault("max_length", 253)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> tuple[Any, ...]:
        name, path, args, kwargs = super().deconstruct()
        if self.what != "domain":
            kwargs["what"] = self.what
        return name, path, args, kwargs

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if not value:
            return value
        try:
            return to_ascii(value, what=self.what)
        except DomainError as exc:
            raise ValidationError(str(exc), code="invalid") from exc


class NetworkField(models.CharField):
    """An IP network in its shortest form (2001:db8::/48), normalised when cleaned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 43)  # the longest shortest form: an IPv6 /128
        super().__init__(*args, **kwargs)

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if not value:
            return value
        try:
            return str(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:
            raise ValidationError(_network_error(value, exc), code="invalid") from exc


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


# What a provider cannot be without; the admin formsets and the import check these alike.
MISSING_PART_MESSAGES = {
    "domains": _("Add at least one domain: the first one is the provider's id."),
    "incoming": _("A hosted provider needs at least one incoming (IMAP or POP3) server."),
    "outgoing": _("A hosted provider needs at least one outgoing (SMTP) server."),
}


class Registration(models.TextChoices):
    OPEN = "open", _("open to everyone")
    TOKEN = "token", _("only with an onboarding token")
    CLOSED = "closed", _("closed")


class CancelAnswer(models.TextChoices):
    """What the hosted registration page answers when the person cancels (specs/provisioner.md)."""

    DOCUMENT = "document", _("the USER_CANCEL document (mail clients close the page)")
    PAGE = "page", _("an HTML goodbye page")


# Logos shown on the registration pages: raster images or SVG, small enough to embed in a
# row and serve from any web process (no shared media storage needed).
LOGO_MAX_BYTES = 256 * 1024
LOGO_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/svg+xml")
_ACCENT_COLOR = re.compile(r"^#[0-9a-f]{6}$")


class ProviderQuerySet(models.QuerySet["Provider"]):
    def enabled(self) -> ProviderQuerySet:
        return self.filter(enabled=True)

    def serving_domain(self, domain: str) -> ProviderQuerySet:
        """Providers (zero or one) owning `domain`, matched case-insensitively and IDN-aware."""
        try:
            ascii_name = to_ascii(domain)
        except DomainError:
            return self.none()
        return self.filter(domains__name=ascii_name)

    def with_suggestion_stats(self, since: datetime) -> ProviderQuerySet:
        """Annotate each provider with its suggestion counters summed from `since` on.

        `stat_queries`, `stat_succeeded`, `stat_timeouts`, `stat_errors`,
        `stat_latency_total`, `stat_latency_max` (0 without rows). Subqueries, not a join,
        so that other annotations (server counts) are not multiplied by the hourly rows.
        """
        rows = SuggestionStat.objects.filter(provider=models.OuterRef("pk"), hour__gte=since)
        annotations = {}
        for name, column, function in (
            ("stat_queries", "queries", models.Sum),
            ("stat_succeeded", "succeeded", models.Sum),
            ("stat_timeouts", "timeouts", models.Sum),
            ("stat_errors", "errors", models.Sum),
            ("stat_latency_total", "latency_ms_total", models.Sum),
            ("stat_latency_max", "latency_ms_max", models.Max),
        ):
            total = rows.values("provider").annotate(value=function(column)).values("value")
            annotations[name] = Coalesce(
                models.Subquery(total, output_field=models.BigIntegerField()), 0
            )
        return self.annotate(**annotations)

    def offered(self) -> ProviderQuerySet:
        """Providers clients may be offered for sign-up (provider list, suggestions).

        Enabled, with the fields Thunderbird requires (it skips an entry that lacks one:
        specs/provisioner.md), and, when hosted, open to everyone (token-only registration
        needs an invitation that a client cannot have).
        """
        return (
            self.enabled()
            .filter(domains__isnull=False)
            .exclude(tos_url="")
            .exclude(privacy_url="")
            .filter(models.Q(hosted=False) | models.Q(registration=Registration.OPEN))
            .distinct()
        )


class ProviderManager(models.Manager.from_queryset(ProviderQuerySet)):  # type: ignore[misc]
    """Providers without their logo's bytes: only the logo view reads them (lazily)."""

    def get_queryset(self) -> ProviderQuerySet:
        queryset: ProviderQuerySet = super().get_queryset().defer("logo")
        return queryset


class Provider(models.Model):
    slug = models.SlugField(
        unique=True, help_text=_("Short name used in URLs, e.g. /register/<slug>/.")
    )
    name = models.CharField(max_length=200, help_text=_("Shown to people, e.g. “Demo Mail”."))
    short_name = models.CharField(max_length=60, help_text=_("Shown where space is short."))
    enabled = models.BooleanField(
        default=True,
        help_text=_(
            "Listed to mail clients and open for registration as configured. Autoconfig keeps "
            "answering for a disabled provider: its existing users still need it."
        ),
    )
    hosted = models.BooleanField(
        default=True,
        help_text=_(
            "This portal creates the mailboxes (registration pages, suggestions, QR codes, "
            "API). Off for a remote provider reached through its own URLs."
        ),
    )
    registration = models.CharField(
        max_length=10, choices=Registration.choices, default=Registration.OPEN
    )
    registration_url = models.CharField(
        max_length=500,
        blank=True,
        help_text=_(
            "Remote providers only: the sign-up URL template with {firstname}, {lastname} "
            "and {email}."
        ),
    )
    suggestion_url = models.URLField(
        max_length=500, blank=True, help_text=_("Remote providers only: its suggestion API.")
    )
    languages = models.CharField(
        max_length=200, default="*", help_text=_("Locale tags separated by commas, or * for all.")
    )
    countries = models.CharField(
        max_length=400,
        default="*",
        help_text=_("ISO 3166-1 country codes (DE, FR, …) separated by commas, or * for all."),
    )
    homepage = models.URLField(blank=True)
    tos_url = models.URLField("terms of service URL", blank=True)
    privacy_url = models.URLField("privacy policy URL", blank=True)
    price = models.DecimalField(
        max_digits=9,
        decimal_places=2,
        default=0,
        validators=[MinValueValidator(0)],
        help_text=_("Price per year; 0 means free."),
    )
    quota_mb = models.PositiveIntegerField(
        "mailbox quota (MB)", default=1024, help_text=_("0 means no limit.")
    )
    username_min_length = models.PositiveSmallIntegerField(
        "shortest user name",
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text=_("Characters before the @ of a new address."),
    )
    username_max_length = models.PositiveSmallIntegerField(
        "longest user name",
        default=32,
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text=_("At most 64, the limit of RFC 5321."),
    )
    username_punctuation = models.CharField(
        "punctuation allowed in user names",
        max_length=3,
        blank=True,
        default=".-_",
        help_text=_(
            "Besides a-z and 0-9, any of . - _ (never first, last or twice in a row). "
            "Empty: letters and digits only."
        ),
    )
    password_min_length = models.PositiveSmallIntegerField(
        "shortest password",
        default=8,
        validators=[MinValueValidator(8), MaxValueValidator(128)],
        help_text=_("At least 8; common and name-like passwords are always refused."),
    )
    require_verified_email = models.BooleanField(
        "require a verified email address",
        default=False,
        help_text=_(
            "New accounts from the registration API stay pending until the code mailed to "
            "their email address is confirmed."
        ),
    )
    suggestion_timeout = models.FloatField(
        "suggestion time limit (seconds)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.2), MaxValueValidator(30)],
        help_text=_(
            "Remote providers: how long the portal waits for its suggestion API. Empty: the "
            "default (3 s). A slower answer is reported as a timeout, never waited for."
        ),
    )
    suggestion_count = models.PositiveSmallIntegerField(
        "addresses suggested",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text=_(
            "Hosted providers: how many free addresses to suggest from a name. Empty: the "
            "default (5). Thunderbird shows four and folds the rest."
        ),
    )
    require_approval = models.BooleanField(
        "require an administrator's approval",
        default=False,
        help_text=_(
            "New accounts from the public front doors (registration pages, API) cannot log "
            "in anywhere until an administrator approves them in the account list. QR "
            "onboarding tokens (DCACCOUNT) are refused for such a provider: they hand out "
            "credentials that must work at once."
        ),
    )
    accent_color = models.CharField(
        "accent colour",
        max_length=7,
        blank=True,
        help_text=_(
            "Colour of buttons and links on the registration pages, e.g. #0b5cad. Empty: the "
            "portal's blue. Text on it is black or white, whichever reads better."
        ),
    )
    # The logo itself (at most LOGO_MAX_BYTES), served at /register/<slug>/logo; see
    # providers.branding for what is accepted.
    logo = models.BinaryField(blank=True, default=b"", editable=False)
    logo_type = models.CharField(
        "logo type", max_length=20, blank=True, editable=False, help_text=_("Set on upload.")
    )
    cancel_answer = models.CharField(
        "when someone cancels",
        max_length=10,
        choices=CancelAnswer.choices,
        default=CancelAnswer.DOCUMENT,
        help_text=_(
            "Mail clients such as Thunderbird close their registration tab on the document; "
            "the goodbye page suits people who arrive with an ordinary browser."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProviderManager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(registration__in=Registration.values),
                name="provider_registration_valid",
            ),
            models.CheckConstraint(condition=models.Q(price__gte=0), name="provider_price_gte_0"),
            models.CheckConstraint(
                condition=models.Q(username_min_length__lte=models.F("username_max_length")),
                name="provider_username_lengths_ordered",
            ),
            models.CheckConstraint(
                condition=models.Q(password_min_length__gte=8),
                name="provider_password_min_length_gte_8",
            ),
            models.CheckConstraint(
                condition=models.Q(cancel_answer__in=CancelAnswer.values),
                name="provider_cancel_answer_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(logo_type="") | models.Q(logo_type__in=LOGO_TYPES),
                name="provider_logo_type_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    @property
    def language_list(self) -> list[str]:
        return _split(self.languages)

    @property
    def country_list(self) -> list[str]:
        return _split(self.countries)

    @property
    def is_free(self) -> bool:
        return self.price == 0

    @property
    def effective_suggestion_timeout(self) -> float:
        return float(self.suggestion_timeout or settings.SUGGESTION_TIMEOUT)

    @property
    def effective_suggestion_count(self) -> int:
        return int(self.suggestion_count or settings.SUGGESTION_COUNT)

    def missing_list_fields(self) -> list[str]:
        """What keeps this provider out of the provider list (empty: nothing)."""
        missing = []
        if not self.enabled:
            missing.append(str(_("disabled")))
        if not self.tos_url:
            missing.append(str(_("terms of service URL")))
        if not self.privacy_url:
            missing.append(str(_("privacy policy URL")))
        if self.hosted and self.registration != Registration.OPEN:
            missing.append(str(_("registration open to everyone")))
        return missing

    def clean(self) -> None:
        errors: dict[str, Any] = {}
        languages = self.language_list
        self.languages = ",".join(languages)
        if not languages:
            errors["languages"] = _("Enter * or at least one language tag such as en or de-AT.")
        elif any(tag != "*" and not _LANGUAGE_TAG.match(tag) for tag in languages):
            errors["languages"] = _("Use language tags such as en, de or pt-BR, or * alone.")
        countries = [code.upper() for code in self.country_list]
        if not countries:
            errors["countries"] = _("Enter * or at least one two-letter country code.")
        elif any(code != "*" and not _COUNTRY_CODE.match(code) for code in countries):
            errors["countries"] = _("Use two-letter ISO 3166-1 codes such as DE or FR, or *.")
        else:
            self.countries = ",".join(countries)
        self.accent_color = (self.accent_color or "").strip().lower()
        if self.accent_color and not _ACCENT_COLOR.match(self.accent_color):
            errors["accent_color"] = _("Enter a colour as # and six hex digits, e.g. #0b5cad.")
        if (self.username_min_length or 0) > (self.username_max_length or 0):
            errors["username_min_length"] = _("The shortest length is above the longest.")
        if set(self.username_punctuation or "") - set(".-_"):
            errors["username_punctuation"] = _("Only . - and _ can be allowed.")
        if self.hosted:
            if self.registration_url:
                errors["registration_url"] = _(
                    "Leave empty for a hosted provider: people register on this portal."
                )
            if self.suggestion_url:
                errors["suggestion_url"] = _(
                    "Leave empty for a hosted provider: this portal makes the suggestions."
                )
        else:
            if not self.registration_url:
                errors["registration_url"] = _(
                    "A remote provider needs its sign-up URL template, e.g. "
                    "https://provider.example/signup?email={email}."
                )
            elif not re.match(r"^https?://[^/\s]+", self.registration_url):
                errors["registration_url"] = _("Enter an http(s) URL.")
            elif unknown := _unknown_placeholders(self.registration_url, "{", "}"):
                errors["registration_url"] = _(
                    "Unknown placeholder %(found)s; use {firstname}, {lastname} or {email}."
                ) % {"found": ", ".join(unknown)}
            if not self.suggestion_url:
                errors["suggestion_url"] = _("A remote provider needs its suggestion API URL.")
        if errors:
            raise ValidationError(errors)

    def required_parts(self) -> tuple[str, ...]:
        """Which related rows (keys of MISSING_PART_MESSAGES) this provider needs one of.

        Remote providers configure their own clients; hosted ones must say where mail is.
        """
        return ("domains", "incoming", "outgoing") if self.hosted else ("domains",)

    def registration_gate(self) -> str:
        """How a public front door may register here: a Registration value.

        CLOSED also when the provider is disabled or remote (its own site registers).
        """
        if not self.enabled or not self.hosted or self.registration == Registration.CLOSED:
            return Registration.CLOSED
        return str(self.registration)

    @property
    def has_logo(self) -> bool:
        return bool(self.logo_type)

    @property
    def primary_domain(self) -> str:
        """The first domain (A-label): the provider's id in every client-facing format."""
        domain = self.domains.first()
        return domain.name if domain else ""

    def autoconfig_info(self) -> autoconfig.ProviderInfo:
        """This provider's settings as the pure document builders take them."""
        domains = tuple(domain.name for domain in self.domains.all())
        servers = list(self.servers.all())
        return autoconfig.ProviderInfo(
            id=domains[0] if domains else "",
            domains=domains,
            display_name=self.name,
            display_short_name=self.short_name,
            incoming=tuple(s.as_autoconfig() for s in servers if s.is_incoming),
            outgoing=tuple(s.as_autoconfig() for s in servers if not s.is_incoming),
            documentation_url=self.homepage,
        )


def _unknown_placeholders(template: str, start: str, end: str) -> list[str]:
    pattern = re.escape(start) + r"[^" + re.escape(end) + r"\s]*" + re.escape(end)
    known = REGISTRATION_PLACEHOLDERS if start == "{" else USERNAME_PLACEHOLDERS
    return sorted({found for found in re.findall(pattern, template) if found not in known})


class ProviderDomain(models.Model):
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="domains")
    name = HostNameField(
        "domain",
        unique=True,
        help_text=_("A mail domain, e.g. example.org. International names are fine."),
    )
    position = models.PositiveSmallIntegerField(
        default=0, help_text=_("The first domain is the provider's main one.")
    )

    class Meta:
        ordering = ["provider", "position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(name=Lower("name")), name="providerdomain_name_lowercase"
            ),
        ]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        return to_unicode(self.name)

    def validate_unique(self, exclude: Any = None) -> None:
        if exclude and "name" in exclude:
            super().validate_unique(exclude=exclude)
            return
        # Say who owns the domain instead of Django's generic "already exists".
        owner = (
            ProviderDomain.objects.filter(name=self.name)
            .exclude(pk=self.pk)
            .select_related("provider")
            .first()
        )
        if owner is not None:
            raise ValidationError(
                {
                    "name": _("%(domain)s already belongs to the provider %(provider)s.")
                    % {"domain": self.display_name, "provider": owner.provider.name}
                }
            )
        super().validate_unique(exclude=exclude)


class ServerType(models.TextChoices):
    IMAP = "imap", "IMAP"
    POP3 = "pop3", "POP3"
    SMTP = "smtp", "SMTP"


class SocketType(models.TextChoices):
    SSL = "SSL", _("SSL/TLS (TLS from the start)")
    STARTTLS = "STARTTLS", "STARTTLS"
    PLAIN = "plain", _("none (unencrypted)")


class Authentication(models.TextChoices):
    PASSWORD_CLEARTEXT = "password-cleartext", _("normal password")
    PASSWORD_ENCRYPTED = "password-encrypted", _("encrypted password (CRAM-MD5)")
    NTLM = "NTLM", "NTLM"
    GSSAPI = "GSSAPI", "Kerberos / GSSAPI"
    OAUTH2 = "OAuth2", "OAuth2"
    CLIENT_IP = "client-IP-address", _("client IP address")
    TLS_CLIENT_CERT = "TLS-client-cert", _("TLS client certificate")
    NONE = "none", _("no authentication")


INCOMING_TYPES = (ServerType.IMAP, ServerType.POP3)


class ServerSetting(models.Model):
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="servers")
    type = models.CharField(max_length=4, choices=ServerType.choices)
    hostname = HostNameField(what="host name", help_text=_("e.g. imap.example.org"))
    port = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text=_("IMAP: 993 (SSL/TLS) or 143 (STARTTLS). POP3: 995 or 110. SMTP: 465 or 587."),
    )
    socket_type = models.CharField(
        "connection security", max_length=8, choices=SocketType.choices, default=SocketType.SSL
    )
    authentication = models.CharField(
        max_length=20, choices=Authentication.choices, default=Authentication.PASSWORD_CLEARTEXT
    )
    username = models.CharField(
        "user name",
        max_length=255,
        default="%EMAILADDRESS%",
        help_text=_(
            "What the mail client logs in with: %EMAILADDRESS% (the full address), "
            "%EMAILLOCALPART% (the part before @) or %EMAILDOMAIN%."
        ),
    )
    position = models.PositiveSmallIntegerField(
        default=0, help_text=_("Lower comes first: clients prefer the first incoming server.")
    )

    class Meta:
        ordering = ["provider", "position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(port__gte=1, port__lte=65535), name="serversetting_port_range"
            ),
            models.CheckConstraint(
                condition=models.Q(type__in=ServerType.values), name="serversetting_type_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(socket_type__in=SocketType.values),
                name="serversetting_socket_type_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(authentication__in=Authentication.values),
                name="serversetting_authentication_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} {to_unicode(self.hostname)}:{self.port}"

    @property
    def is_incoming(self) -> bool:
        return self.type in INCOMING_TYPES

    def clean(self) -> None:
        errors: dict[str, Any] = {}
        service = _IMPLICIT_TLS_PORTS.get(self.port or 0)
        if service and self.socket_type != SocketType.SSL:
            errors["socket_type"] = _(
                "Port %(port)s is %(service)s, where TLS starts at once: choose SSL/TLS, or "
                "use the STARTTLS port instead."
            ) % {"port": self.port, "service": service}
        if unknown := _unknown_placeholders(self.username or "", "%", "%"):
            errors["username"] = _(
                "Unknown placeholder %(found)s; use %%EMAILADDRESS%%, %%EMAILLOCALPART%% or "
                "%%EMAILDOMAIN%%."
            ) % {"found": ", ".join(unknown)}
        if self.username and any(ord(char) < 32 for char in self.username):
            errors["username"] = _("The user name cannot contain control characters.")
        if errors:
            raise ValidationError(errors)

    def as_autoconfig(self) -> autoconfig.Server:
        return autoconfig.Server(
            type=self.type,
            hostname=self.hostname,
            port=self.port,
            socket_type=self.socket_type,
            authentication=self.authentication,
            username=self.username,
        )


class SuggestionClient(models.Model):
    """A network allowed to call this portal's suggestion engine (/providers/<slug>/suggest)."""

    network = NetworkField(help_text=_("An address or network, e.g. 192.0.2.10 or 2001:db8::/48."))
    provider = models.ForeignKey(
        Provider,
        on_delete=models.CASCADE,
        related_name="suggestion_clients",
        null=True,
        blank=True,
        help_text=_("Empty: allowed for every hosted provider."),
    )
    note = models.CharField(max_length=200, blank=True, help_text=_("Who this is."))
    token_sha256 = models.CharField(
        "access token (SHA-256)",
        max_length=64,
        blank=True,
        editable=False,
        help_text=_(
            "When set, callers from this network must also send "
            "“Authorization: Bearer <token>”. Issue one with the action in the list; only "
            "its SHA-256 is kept."
        ),
    )

    class Meta:
        ordering = ["network"]
        constraints = [
            # Two partial constraints because NULLs are distinct in a plain unique index.
            models.UniqueConstraint(
                fields=["network"],
                condition=models.Q(provider__isnull=True),
                name="suggestionclient_global_network_unique",
            ),
            models.UniqueConstraint(
                fields=["network", "provider"],
                condition=models.Q(provider__isnull=False),
                name="suggestionclient_provider_network_unique",
            ),
        ]

    def __str__(self) -> str:
        return str(self.network)

    def admits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, token: str) -> bool:
        """True if `address` is in this network and, when a token is set, `token` is it."""
        network = ipaddress.ip_network(self.network)
        if address.version != network.version or address not in network:
            return False
        if not self.token_sha256:
            return True
        offered = hashlib.sha256(token.encode()).hexdigest() if token else ""
        return hmac.compare_digest(offered, self.token_sha256)


class SuggestionSettings(models.Model):
    """The one row of suggestion settings administrators may change without a deployment."""

    rate_count = models.PositiveIntegerField(
        "queries per client",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("How many suggestion queries one client address may make per window."),
    )
    rate_minutes = models.PositiveIntegerField(
        "window (minutes)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(1440)],
        help_text=_("Leave both empty for the default from the server settings."),
    )

    class Meta:
        verbose_name = _("suggestion settings")
        verbose_name_plural = _("suggestion settings")
        constraints = [
            models.CheckConstraint(condition=models.Q(pk=1), name="suggestionsettings_singleton"),
            models.CheckConstraint(
                condition=models.Q(rate_count__isnull=True, rate_minutes__isnull=True)
                | models.Q(rate_count__isnull=False, rate_minutes__isnull=False),
                name="suggestionsettings_rate_both_or_neither",
            ),
        ]

    def __str__(self) -> str:
        return str(_("Suggestion rate limit: %(rate)s")) % {"rate": self.rate_description}

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.pk = 1
        super().save(*args, **kwargs)
        transaction.on_commit(_forget_suggestion_rate)

    @classmethod
    def load(cls) -> SuggestionSettings:
        """The saved row, or an unsaved one holding the defaults."""
        return cls.objects.filter(pk=1).first() or cls(pk=1)

    @classmethod
    def current_rate(cls) -> str:
        """The rate in force, from the shared cache (refreshed from the row every 30 s and on
        every save), so that a refused request costs no database query."""
        try:
            rate = cache.get(SUGGESTION_RATE_CACHE_KEY)
        except Exception:  # the cache's own errors; the rate limiter then fails closed
            # Not written back either: against a stalled Redis each call costs its read
            # timeout, and the limiter's own call is the one that must be made.
            return cls.load().rate
        if isinstance(rate, str):
            return rate
        rate = cls.load().rate
        with contextlib.suppress(Exception):
            cache.set(SUGGESTION_RATE_CACHE_KEY, rate, timeout=30)
        return rate

    def clean(self) -> None:
        if (self.rate_count is None) != (self.rate_minutes is None):
            raise ValidationError(
                _("Fill in both the number of queries and the window, or neither.")
            )

    @property
    def rate(self) -> str:
        """The rate as django-ratelimit reads it: "30/m", "100/5m"."""
        if self.rate_count is None or self.rate_minutes is None:
            rate: str = settings.SUGGESTION_RATE
            return rate
        minutes = "" if self.rate_minutes == 1 else str(self.rate_minutes)
        return f"{self.rate_count}/{minutes}m"

    @property
    def rate_description(self) -> str:
        count, _slash, period = self.rate.partition("/")
        return f"{count} per {period}"


SUGGESTION_RATE_CACHE_KEY = "providers:suggestion-rate"


def _forget_suggestion_rate() -> None:
    with contextlib.suppress(Exception):  # a down cache holds no stale rate either
        cache.delete(SUGGESTION_RATE_CACHE_KEY)


class SuggestionStat(models.Model):
    """Counters of one provider's suggestion queries in one hour (UTC), as the fan-out saw them."""

    provider = models.ForeignKey(
        Provider, on_delete=models.CASCADE, related_name="suggestion_stats"
    )
    hour = models.DateTimeField(help_text=_("Start of the hour (UTC)."))
    queries = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    timeouts = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    addresses = models.PositiveIntegerField(default=0, help_text=_("Addresses suggested in total."))
    latency_ms_total = models.PositiveBigIntegerField(default=0)
    latency_ms_max = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-hour", "provider"]
        verbose_name = _("suggestion statistics (hourly)")
        verbose_name_plural = _("suggestion statistics (hourly)")
        constraints = [
            # The counters are incremented by INSERT ... ON CONFLICT on exactly this pair.
            models.UniqueConstraint(
                fields=["provider", "hour"], name="suggestionstat_one_per_hour"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider_id} {self.hour:%Y-%m-%d %H}:00"

    @property
    def latency_ms_mean(self) -> int:
        return round(self.latency_ms_total / self.queries) if self.queries else 0


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour holding `moment` (aware)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _network_error(value: str, exc: ValueError) -> str:
    if "host bits set" in str(exc):
        fixed = ipaddress.ip_network(value.strip(), strict=False)
        return str(_("%(value)s has host bits set; did you mean %(fixed)s?")) % {
            "value": value,
            "fixed": fixed,
        }
    return str(_("%(value)s is not an IP address or network.")) % {"value": value}


def token_digest(secret: str) -> str:
    """The SHA-256 (hex) under which a token secret is stored; the secret never is."""
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenState(models.TextChoices):
    USABLE = "usable", _("usable")
    REVOKED = "revoked", _("revoked")
    EXPIRED = "expired", _("expired")
    USED_UP = "used_up", _("used up")


class OnboardingTokenQuerySet(models.QuerySet["OnboardingToken"]):
    def for_secret(self, secret: str) -> OnboardingTokenQuerySet:
        """The token (zero or one) whose secret this is, looked up by its SHA-256."""
        return self.filter(token_sha256=token_digest(secret))

    def claimable(self, at: datetime) -> OnboardingTokenQuerySet:
        """Tokens that may give one more use at `at`: the WHERE of the atomic claim."""
        return self.filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=at),
            revoked_at__isnull=True,
            use_count__lt=models.F("max_uses"),
        )


class OnboardingToken(models.Model):
    """An invitation behind a DCACCOUNT code: each use creates one account (specs/qr.md).

    Only the SHA-256 of the secret is kept: the code can be printed when the token is issued
    (or given a new secret), never read back from the database.
    """

    name = models.CharField(
        max_length=100, unique=True, help_text=_("For you: e.g. “spring workshop 2025”.")
    )
    domain = models.ForeignKey(
        ProviderDomain,
        on_delete=models.CASCADE,
        related_name="onboarding_tokens",
        help_text=_("Accounts are created in this domain (hosted providers only)."),
    )
    prefix = models.CharField(
        "address prefix",
        max_length=32,
        blank=True,
        help_text=_(
            "New addresses are this prefix and random letters, e.g. tmp. gives tmp.k3x9qa7m2w."
        ),
    )
    token_sha256 = models.CharField(max_length=64, unique=True, editable=False)
    max_uses = models.PositiveIntegerField(
        "maximum uses",
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(100_000)],
        help_text=_("How many accounts the code may create; 1 is a single-use invitation."),
    )
    use_count = models.PositiveIntegerField("uses so far", default=0, editable=False)
    expires_at = models.DateTimeField(
        "valid until", null=True, blank=True, help_text=_("Empty: the code never expires.")
    )
    account_lifetime = models.DurationField(
        null=True,
        blank=True,
        help_text=_(
            "Empty: the accounts are permanent. Otherwise each account is disabled this long "
            "after its creation, and deleted a grace period later."
        ),
    )
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = OnboardingTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("onboarding token")
        constraints = [
            # The claim's conditional UPDATE keeps to this; the constraint makes any other
            # write that would overspend the token fail instead (RELIABILITY.md invariant 3).
            models.CheckConstraint(
                condition=models.Q(use_count__lte=models.F("max_uses")),
                name="onboardingtoken_uses_within_max",
            ),
            models.CheckConstraint(
                condition=models.Q(max_uses__gte=1), name="onboardingtoken_max_uses_gte_1"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def state(self, at: datetime) -> TokenState:
        """What a redemption at `at` would meet; revoked wins over expired over used up."""
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if self.expires_at is not None and self.expires_at <= at:
            return TokenState.EXPIRED
        if self.use_count >= self.max_uses:
            return TokenState.USED_UP
        return TokenState.USABLE

    def is_usable(self, at: datetime) -> bool:
        return self.state(at) == TokenState.USABLE

    @property
    def uses_left(self) -> int:
        return max(0, self.max_uses - self.use_count)

    def clean(self) -> None:
        if self.max_uses is not None and self.max_uses < self.use_count:
            raise ValidationError(
                {
                    "max_uses": _("It has been used %(count)d times already.")
                    % {"count": self.use_count}
                }
            )
        self.prefix = (self.prefix or "").strip().lower()
        if self.prefix and (
            not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.prefix)
            or re.search(r"[._-]{2}", self.prefix)
        ):
            raise ValidationError(
                {"prefix": _("Use lower-case letters, digits and . - _ (not first, not twice).")}
            )
        if self.domain_id is not None:
            provider = self.domain.provider
            if not provider.hosted:
                raise ValidationError({"domain": _("Choose a domain of a hosted provider.")})
            if provider.require_approval:
                raise ValidationError(
                    {
                        "domain": _(
                            "%(provider)s approves each new account by hand, but a DCACCOUNT "
                            "code hands out credentials that must work at once. Turn approval "
                            "off, or create the accounts yourself and print DCLOGIN codes."
                        )
                        % {"provider": provider.name}
                    }
                )
            forbidden = set(".-_") - set(provider.username_punctuation)
            if any(char in forbidden for char in self.prefix):
                raise ValidationError(
                    {
                        "prefix": _("%(provider)s does not allow %(chars)s in user names.")
                        % {"provider": provider.name, "chars": " ".join(sorted(forbidden))}
                    }
                )
            longest = len(self.prefix) + ONBOARDING_RANDOM_LENGTH
            if not provider.username_min_length <= longest <= provider.username_max_length:
                raise ValidationError(
                    {
                        "prefix": _(
                            "With the %(random)d random characters the user names would be "
                            "%(length)d long; %(provider)s allows %(min)d to %(max)d."
                        )
                        % {
                            "random": ONBOARDING_RANDOM_LENGTH,
                            "length": longest,
                            "provider": provider.name,
                            "min": provider.username_min_length,
                            "max": provider.username_max_length,
                        }
                    }
                )


# Random characters after the prefix of a token's addresses: 10 of 31 symbols, about 50
# bits, so that a clash with an existing address is negligible (it is retried anyway).
ONBOARDING_RANDOM_LENGTH = 10
