"""The provider console: providers with their domains, servers and suggestion clients."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from providers.domains import to_unicode
from providers.models import (
    INCOMING_TYPES,
    MISSING_PART_MESSAGES,
    Provider,
    ProviderDomain,
    ServerSetting,
    ServerType,
    SuggestionClient,
)


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
    list_display = [
        "name",
        "slug",
        "main_domain",
        "hosted",
        "enabled",
        "registration",
        "server_count",
        "preview",
    ]
    list_filter = ["enabled", "hosted", "registration"]
    search_fields = ["name", "short_name", "slug", "domains__name"]
    prepopulated_fields = {"slug": ["name"]}
    # "example.org/tos" typed without a scheme means https (Django 6's default too).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = ["preview", "created_at", "updated_at"]
    inlines = [DomainInline, IncomingServerInline, OutgoingServerInline, SuggestionClientInline]
    fieldsets = [
        (None, {"fields": ["name", "short_name", "slug", "enabled"]}),
        (
            _("Registration"),
            {"fields": ["hosted", "registration", "registration_url", "suggestion_url"]},
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
                    "quota_mb",
                ]
            },
        ),
        (_("Autoconfig"), {"fields": ["preview"]}),
        (_("History"), {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        # One query for the server counts and one for the domains, not one per row.
        queryset: QuerySet[Provider] = (
            super()
            .get_queryset(request)
            .annotate(server_total=Count("servers", distinct=True))
            .prefetch_related("domains")
        )
        return queryset

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

    @admin.display(description=_("preview autoconfig"))
    def preview(self, provider: Provider) -> str:
        if not provider.pk:
            return str(_("Save first; the preview uses the main domain."))
        return _preview_links(provider)


@admin.register(SuggestionClient)
class SuggestionClientAdmin(admin.ModelAdmin):
    list_display = ["network", "scope", "note"]
    list_filter = [("provider", admin.EmptyFieldListFilter)]
    search_fields = ["network", "note", "provider__name"]
    autocomplete_fields = ["provider"]
    list_select_related = ["provider"]

    @admin.display(description=_("allowed for"), ordering="provider__name")
    def scope(self, client: SuggestionClient) -> str:
        return client.provider.name if client.provider else str(_("every hosted provider"))


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
