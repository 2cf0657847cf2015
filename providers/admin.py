"""The provider console: providers with their domains, servers and suggestion clients,
and how the providers' suggestion engines have been answering."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from providers import admin_onboarding, branding  # noqa: F401 (admin_onboarding registers)
from providers.domains import to_unicode
from providers.models import (
    INCOMING_TYPES,
    LOGO_MAX_BYTES,
    MISSING_PART_MESSAGES,
    Provider,
    ProviderDomain,
    ServerSetting,
    ServerType,
    SuggestionClient,
    SuggestionSettings,
    SuggestionStat,
)
from providers.services import suggestion_clients, suggestion_stats


class _UnicodeNameForm(forms.ModelForm):
    """Shows stored A-labels (xn--…) in their readable form; they are stored as A-labels."""

    unicode_field = "name"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        value = getattr(self.instance, self.unicode_field, "")
        if self.instance.pk and value:
            self.initial[self.unicode_field] = to_unicode(value)


class DomainForm(_UnicodeNameForm):
    class Meta:
        model = ProviderDomain
        fields = ["name", "position"]


class _RequiredRowsFormSet(forms.BaseInlineFormSet):
    """An inline formset for one of the parts a provider needs (Provider.required_parts)."""

    part = ""

    def rows_left(self) -> int:
        deleted = set(map(id, self.deleted_forms)) if self.can_delete else set()
        return len(
            [
                form
                for form in self.forms
                if (form.has_changed() or form.instance.pk) and id(form) not in deleted
            ]
        )

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        if self.part in self.instance.required_parts() and self.rows_left() == 0:
            raise ValidationError(MISSING_PART_MESSAGES[self.part])


class DomainFormSet(_RequiredRowsFormSet):
    part = "domains"


class DomainInline(admin.TabularInline):
    model = ProviderDomain
    form = DomainForm
    formset = DomainFormSet
    extra = 0
    min_num = 0


class IncomingFormSet(_RequiredRowsFormSet):
    part = "incoming"


class OutgoingFormSet(_RequiredRowsFormSet):
    part = "outgoing"


class IncomingServerForm(_UnicodeNameForm):
    unicode_field = "hostname"
    type = forms.ChoiceField(
        choices=[(t.value, t.label) for t in INCOMING_TYPES], initial=ServerType.IMAP
    )

    class Meta:
        model = ServerSetting
        fields = [
            "type",
            "hostname",
            "port",
            "socket_type",
            "authentication",
            "username",
            "position",
        ]


class OutgoingServerForm(_UnicodeNameForm):
    unicode_field = "hostname"

    class Meta:
        model = ServerSetting
        fields = ["hostname", "port", "socket_type", "authentication", "username", "position"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance.type = ServerType.SMTP


class IncomingServerInline(admin.TabularInline):
    model = ServerSetting
    form = IncomingServerForm
    formset = IncomingFormSet
    extra = 0
    verbose_name = _("incoming server")
    verbose_name_plural = _("incoming servers (clients prefer the first)")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ServerSetting]:
        return super().get_queryset(request).filter(type__in=INCOMING_TYPES)


class OutgoingServerInline(admin.TabularInline):
    model = ServerSetting
    form = OutgoingServerForm
    formset = OutgoingFormSet
    extra = 0
    verbose_name = _("outgoing server")
    verbose_name_plural = _("outgoing servers (SMTP)")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ServerSetting]:
        return super().get_queryset(request).filter(type=ServerType.SMTP)


class SuggestionClientInline(admin.TabularInline):
    model = SuggestionClient
    extra = 0
    verbose_name_plural = _("suggestion clients for this provider only")


class ProviderForm(forms.ModelForm):
    """The provider with its logo upload: the bytes are checked (providers.branding), never
    the type the browser claims; "remove" clears it."""

    logo_file = forms.FileField(
        label=_("logo"),
        required=False,
        help_text=_(
            "PNG, JPEG, WebP, GIF or SVG, at most 256 KB; shown square (48 px) on the "
            "registration pages."
        ),
    )
    remove_logo = forms.BooleanField(label=_("remove the logo"), required=False)

    class Meta:
        model = Provider
        # ModelAdmin passes the fields of its fieldsets; these are the ones styled here.
        fields = ["accent_color", "cancel_answer"]
        # Not <input type=color>: it cannot be empty, and empty means the portal's colour.
        widgets = {
            "accent_color": forms.TextInput(attrs={"placeholder": "#0b5cad", "size": 8}),
        }

    def clean_logo_file(self) -> Any:
        upload = self.cleaned_data.get("logo_file")
        if not upload:
            return None
        data = upload.read(LOGO_MAX_BYTES + 1)
        try:
            content_type = branding.sniff_logo(data, max_bytes=LOGO_MAX_BYTES)
        except branding.LogoRefused as exc:
            raise ValidationError(str(exc)) from None
        return (data, content_type)

    def save(self, commit: bool = True) -> Provider:
        provider: Provider = super().save(commit=False)
        logo = self.cleaned_data.get("logo_file")
        if logo:
            provider.logo, provider.logo_type = logo
        elif self.cleaned_data.get("remove_logo"):
            provider.logo, provider.logo_type = b"", ""
        if commit:
            provider.save()
            self.save_m2m()
        return provider


def _preview_links(provider: Provider) -> str:
    domain = provider.primary_domain
    if not domain:
        return "-"
    address = f"user@{domain}"
    query = urlencode({"emailaddress": address})
    links = [
        (reverse("autoconfig-wellknown") + "?" + query, "Thunderbird"),
        (reverse("autodiscover") + "?" + query, "Autodiscover"),
        (reverse("mobileconfig") + "?" + query, "Apple"),
    ]
    return format_html_join(" · ", '<a href="{}" target="_blank" rel="noopener">{}</a>', links)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = [
        "name",
        "slug",
        "main_domain",
        "hosted",
        "enabled",
        "registration",
        "server_count",
        "listed",
        "suggestions_last_day",
        "suggestion_failures_last_day",
        "suggestion_latency_last_day",
        "preview",
    ]
    list_filter = ["enabled", "hosted", "registration"]
    search_fields = ["name", "short_name", "slug", "domains__name"]
    prepopulated_fields = {"slug": ["name"]}
    # "example.org/tos" typed without a scheme means https (Django 6's default too).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = [
        "preview",
        "listed",
        "suggestion_summary",
        "registration_page",
        "created_at",
        "updated_at",
    ]
    inlines = [DomainInline, IncomingServerInline, OutgoingServerInline, SuggestionClientInline]
    fieldsets = [
        (None, {"fields": ["name", "short_name", "slug", "enabled"]}),
        (
            _("Registration"),
            {"fields": ["hosted", "registration", "registration_url", "suggestion_url"]},
        ),
        (
            _("Registration pages"),
            {
                "fields": [
                    "registration_page",
                    "accent_color",
                    "logo_file",
                    "remove_logo",
                    "cancel_answer",
                ]
            },
        ),
        (
            _("How clients list it"),
            {
                "fields": [
                    "languages",
                    "countries",
                    "price",
                    "homepage",
                    "tos_url",
                    "privacy_url",
                ]
            },
        ),
        (
            _("Rules for new accounts"),
            {
                "fields": [
                    "username_min_length",
                    "username_max_length",
                    "username_punctuation",
                    "password_min_length",
                    "require_verified_email",
                    "require_approval",
                    "quota_mb",
                ]
            },
        ),
        (
            _("Suggestions"),
            {
                "fields": [
                    "listed",
                    "suggestion_timeout",
                    "suggestion_count",
                    "suggestion_summary",
                ]
            },
        ),
        (_("Autoconfig"), {"fields": ["preview"]}),
        (_("History"), {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        # One query for the server counts and one for the domains, not one per row. The
        # last day's suggestion counters come as subqueries of the same query: an operator
        # opening the list should see a failing provider without another click.
        queryset: QuerySet[Provider] = (
            super()
            .get_queryset(request)
            .annotate(server_total=Count("servers", distinct=True))
            .with_suggestion_stats(suggestion_stats.since_last_day())
            .prefetch_related("domains")
        )
        return queryset

    @admin.display(description=_("in provider list"), boolean=False)
    def listed(self, provider: Provider) -> str:
        missing = provider.missing_list_fields()
        if not missing:
            return str(_("yes"))
        return str(_("no: %(missing)s")) % {"missing": ", ".join(missing)}

    @admin.display(description=_("suggestions (24 h)"), ordering="stat_queries")
    def suggestions_last_day(self, provider: Provider) -> int:
        return int(getattr(provider, "stat_queries", 0))

    @admin.display(description=_("failed (24 h)"), ordering="stat_errors")
    def suggestion_failures_last_day(self, provider: Provider) -> str:
        queries = int(getattr(provider, "stat_queries", 0))
        if not queries:
            return "-"
        timeouts = int(getattr(provider, "stat_timeouts", 0))
        errors = int(getattr(provider, "stat_errors", 0))
        share = (timeouts + errors) / queries
        text = _("%(share).0f%% (%(timeouts)d timeouts, %(errors)d errors)") % {
            "share": share * 100,
            "timeouts": timeouts,
            "errors": errors,
        }
        if share >= 0.1:
            return format_html('<strong style="color:#ba2121">{}</strong>', text)
        return str(text)

    @admin.display(description=_("latency (24 h): mean / max ms"))
    def suggestion_latency_last_day(self, provider: Provider) -> str:
        queries = int(getattr(provider, "stat_queries", 0))
        if not queries:
            return "-"
        mean = round(int(getattr(provider, "stat_latency_total", 0)) / queries)
        return f"{mean} / {int(getattr(provider, 'stat_latency_max', 0))}"

    @admin.display(description=_("last 24 hours"))
    def suggestion_summary(self, provider: Provider) -> str:
        if not provider.pk:
            return "-"
        queries = int(getattr(provider, "stat_queries", 0))
        url = (
            reverse("admin:providers_suggestionstat_changelist")
            + "?"
            + urlencode({"provider__id__exact": provider.pk})
        )
        if not queries:
            return format_html('{} <a href="{}">{}</a>', _("No queries."), url, _("Hourly figures"))
        return format_html(
            '{} {}, {} {}, {} {}; {} ms {} <a href="{}">{}</a>',
            queries,
            _("queries"),
            int(getattr(provider, "stat_succeeded", 0)),
            _("answered"),
            int(getattr(provider, "stat_timeouts", 0)) + int(getattr(provider, "stat_errors", 0)),
            _("failed"),
            self.suggestion_latency_last_day(provider),
            _("(mean / max)."),
            url,
            _("Hourly figures"),
        )

    @admin.display(description=_("main domain"))
    def main_domain(self, provider: Provider) -> str:
        domains = list(provider.domains.all())
        if not domains:
            return "-"
        more = f" (+{len(domains) - 1})" if len(domains) > 1 else ""
        return domains[0].display_name + more

    @admin.display(description=_("servers"), ordering="server_total")
    def server_count(self, provider: Provider) -> int:
        return getattr(provider, "server_total", 0)

    @admin.display(description=_("registration page"))
    def registration_page(self, provider: Provider) -> str:
        if not provider.pk or not provider.hosted:
            return "-"
        url = reverse("register", args=[provider.slug])
        logo = (
            format_html(
                '<img src="{}" alt="" width="48" height="48" style="object-fit:contain"> ',
                reverse("register-logo", args=[provider.slug]),
            )
            if provider.has_logo
            else ""
        )
        return format_html('{}<a href="{}" target="_blank" rel="noopener">{}</a>', logo, url, url)

    @admin.display(description=_("preview autoconfig"))
    def preview(self, provider: Provider) -> str:
        if not provider.pk:
            return str(_("Save first; the preview uses the main domain."))
        return _preview_links(provider)


@admin.register(SuggestionClient)
class SuggestionClientAdmin(admin.ModelAdmin):
    list_display = ["network", "scope", "token_required", "note"]
    list_filter = [("provider", admin.EmptyFieldListFilter)]
    search_fields = ["network", "note", "provider__name"]
    autocomplete_fields = ["provider"]
    list_select_related = ["provider"]
    readonly_fields = ["token_required"]
    actions = ["issue_tokens", "remove_tokens"]

    @admin.display(description=_("allowed for"), ordering="provider__name")
    def scope(self, client: SuggestionClient) -> str:
        return client.provider.name if client.provider else str(_("every hosted provider"))

    @admin.display(description=_("token required"), boolean=True)
    def token_required(self, client: SuggestionClient) -> bool:
        return bool(client.token_sha256)

    @admin.action(description=_("Issue new access tokens (shown once)"), permissions=["change"])
    def issue_tokens(
        self, request: HttpRequest, queryset: QuerySet[SuggestionClient]
    ) -> HttpResponse:
        issued = suggestion_clients.issue_tokens(
            client_ids=list(queryset.values_list("pk", flat=True))
        )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Access tokens"),
            "rows": issued,
            "opts": self.model._meta,
        }
        # admin_site.admin_view adds no-store (never_cache) to the response.
        return TemplateResponse(request, "providers/admin/tokens_once.html", context)

    @admin.action(
        description=_("Remove access tokens (the network alone admits)"), permissions=["change"]
    )
    def remove_tokens(self, request: HttpRequest, queryset: QuerySet[SuggestionClient]) -> None:
        removed = suggestion_clients.remove_tokens(
            client_ids=list(queryset.values_list("pk", flat=True))
        )
        self.message_user(
            request,
            _("%(done)d tokens removed, %(skipped)d had none.")
            % {"done": removed, "skipped": queryset.count() - removed},
            messages.SUCCESS,
        )


@admin.register(SuggestionSettings)
class SuggestionSettingsAdmin(admin.ModelAdmin):
    """The one row of suggestion settings: the rate limit of GET /api/v1/suggestions."""

    list_display = ["__str__", "rate_count", "rate_minutes"]
    fieldsets = [(_("Rate limit per client address"), {"fields": ["rate_count", "rate_minutes"]})]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not SuggestionSettings.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # empty the fields instead: then the server default applies


@admin.register(SuggestionStat)
class SuggestionStatAdmin(admin.ModelAdmin):
    """Read-only hourly counters, as the fan-out saw each provider answer."""

    list_display = [
        "hour",
        "provider",
        "queries",
        "succeeded",
        "timeouts",
        "errors",
        "failure_rate",
        "latency_mean",
        "latency_ms_max",
        "addresses",
    ]
    list_filter = ["provider", "hour"]
    search_fields = ["provider__name", "provider__slug"]
    date_hierarchy = "hour"
    list_select_related = ["provider"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # written by the fan-out only

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("failed"))
    def failure_rate(self, stat: SuggestionStat) -> str:
        if not stat.queries:
            return "-"
        return f"{(stat.timeouts + stat.errors) / stat.queries:.0%}"

    @admin.display(description=_("mean latency (ms)"))
    def latency_mean(self, stat: SuggestionStat) -> int:
        return stat.latency_ms_mean


@admin.register(ProviderDomain)
class ProviderDomainAdmin(admin.ModelAdmin):
    """Read-mostly list of every domain, to answer "who serves this domain?" quickly."""

    list_display = ["display_name", "name", "provider_link", "position"]
    search_fields = ["name", "provider__name", "provider__slug"]
    list_select_related = ["provider"]
    form = DomainForm

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # domains are added on their provider's page

    @admin.display(description=_("domain"), ordering="name")
    def display_name(self, domain: ProviderDomain) -> str:
        return domain.display_name

    @admin.display(description=_("provider"), ordering="provider__name")
    def provider_link(self, domain: ProviderDomain) -> str:
        url = reverse("admin:providers_provider_change", args=[domain.provider_id])
        return format_html('<a href="{}">{}</a>', url, domain.provider.name)
