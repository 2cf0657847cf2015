"""The onboarding console: tokens behind DCACCOUNT codes, and their codes shown once.

Registered from providers/admin.py (kept out of it for size). Token secrets exist only when
a token is issued or given a new secret: that response is the token's printable page (code,
PNG and SVG downloads, PDF poster), never cached (admin pages are never_cache).
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from providers import durations, qr, sheets
from providers.models import OnboardingToken, ProviderDomain
from providers.services import onboarding

# Accounts listed on a token's page; the rest are one click away in the account list.
LISTED_ACCOUNTS = 50


class DurationField(forms.CharField):
    """A duration as specs/qr.md writes it: 30m, 12h, 7d, 2w, 1y or never."""

    def clean(self, value: Any) -> timedelta | None:
        text = super().clean(value)
        try:
            return durations.parse(text)
        except durations.DurationError as exc:
            raise ValidationError(str(exc), code="invalid") from None


class TokenAddForm(forms.ModelForm):
    valid_for = DurationField(
        label=_("code valid for"),
        initial="7d",
        help_text=_("How long the code works: 30m, 12h, 7d, 2w, 1y or never."),
    )
    lifetime = DurationField(
        label=_("account lifetime"),
        initial="never",
        help_text=_(
            "never: permanent accounts. Otherwise each account is disabled this long after "
            "it was made and deleted a grace period later (temporary accounts)."
        ),
    )

    class Meta:
        model = OnboardingToken
        fields = ["name", "domain", "prefix", "max_uses"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["domain"].queryset = ProviderDomain.objects.filter(  # type: ignore[attr-defined]
            provider__hosted=True
        ).select_related("provider")


class TokenChangeForm(forms.ModelForm):
    """A token's page: name, maximum uses and validity; uses and secret are not its own."""

    class Meta:
        model = OnboardingToken
        fields = ["name", "max_uses", "expires_at"]

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        # The model's clean() compares max_uses with the uses so far: read them fresh and
        # lock the row. Django runs the change page in one transaction, so redemptions wait
        # until this save commits and none can slip past a lowered maximum (the check
        # constraint would otherwise fail the save).
        use_count = (
            OnboardingToken.objects.select_for_update()
            .filter(pk=self.instance.pk)
            .values_list("use_count", flat=True)
            .first()
        )
        if use_count is not None:
            self.instance.use_count = use_count
        return cleaned


@admin.register(OnboardingToken)
class OnboardingTokenAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "domain",
        "uses",
        "state_display",
        "expires_at",
        "lifetime_display",
        "account_count",
        "created_by",
        "created_at",
    ]
    list_filter = ["domain__provider", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "domain__name", "prefix"]
    list_select_related = ["domain__provider", "created_by"]
    actions = ["revoke_tokens", "replace_secrets"]
    readonly_fields = [
        "domain",
        "prefix",
        "lifetime_display",
        "uses",
        "state_display",
        "revoked_at",
        "created_by",
        "created_at",
        "updated_at",
        "accounts_made",
    ]
    fieldsets = [
        (None, {"fields": ["name", "domain", "prefix"]}),
        (
            _("Limits"),
            {"fields": ["max_uses", "uses", "expires_at", "lifetime_display", "state_display"]},
        ),
        (_("Accounts it made"), {"fields": ["accounts_made"]}),
        (_("History"), {"fields": ["created_by", "created_at", "updated_at", "revoked_at"]}),
    ]
    add_fieldsets = [
        (None, {"fields": ["name", "domain", "prefix"]}),
        (_("Limits"), {"fields": ["max_uses", "valid_for", "lifetime"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[OnboardingToken]:
        # The number of accounts each token made, in the list's one query: the first thing
        # to compare with its uses (they differ only after a crash; docs/qr.md).
        queryset: QuerySet[OnboardingToken] = (
            super().get_queryset(request).annotate(account_total=Count("accounts"))
        )
        return queryset

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        kwargs["form"] = TokenAddForm if obj is None else TokenChangeForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [] if obj is None else self.readonly_fields

    @admin.display(description=_("uses"))
    def uses(self, token: OnboardingToken) -> str:
        return f"{token.use_count} / {token.max_uses}"

    @admin.display(description=_("state"))
    def state_display(self, token: OnboardingToken) -> str:
        return str(token.state(timezone.now()).label)

    @admin.display(description=_("account lifetime"), ordering="account_lifetime")
    def lifetime_display(self, token: OnboardingToken) -> str:
        return durations.format_duration(token.account_lifetime)

    @admin.display(description=_("accounts"), ordering="account_total")
    def account_count(self, token: OnboardingToken) -> int:
        return int(getattr(token, "account_total", 0))

    @admin.display(description=_("accounts"))
    def accounts_made(self, token: OnboardingToken) -> str:
        accounts = list(token.accounts.select_related("domain")[:LISTED_ACCOUNTS])
        if not accounts:
            return str(_("none yet"))
        links = format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            (
                (reverse("admin:accounts_mailaccount_change", args=[account.pk]), account.address)
                for account in accounts
            ),
        )
        everything = reverse("admin:accounts_mailaccount_changelist")
        return format_html(
            '{} <p><a href="{}?onboarding_token={}">{}</a></p>',
            links,
            everything,
            token.pk,
            _("All accounts of this token"),
        )

    def save_model(
        self, request: HttpRequest, obj: OnboardingToken, form: Any, change: bool
    ) -> None:
        if change:
            # Only what the page changed: uses, revocation and secret are written by the
            # services with their own UPDATEs, maybe since this page loaded the row, and a
            # full-row save would undo them (a lost use could let max_uses be passed).
            fields = [name for name in form.changed_data if name in TokenChangeForm.Meta.fields]
            if fields:
                obj.save(update_fields=[*fields, "updated_at"])
            return
        obj.account_lifetime = form.cleaned_data["lifetime"]
        obj.created_by = request.user  # type: ignore[assignment]  # admin: always a User
        issued = onboarding.issue_token(token=obj, valid_for=form.cleaned_data["valid_for"])
        request._onboarding_issued = [issued]  # type: ignore[attr-defined]  # read by response_add

    def response_add(
        self, request: HttpRequest, obj: OnboardingToken, post_url_continue: Any = None
    ) -> HttpResponse:
        issued = getattr(request, "_onboarding_issued", [])
        return self._show_codes(request, issued, str(_("Onboarding token created")))

    @admin.action(
        description=_("Revoke selected tokens (their codes stop working)"), permissions=["change"]
    )
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[OnboardingToken]) -> None:
        revoked = sum(onboarding.revoke_token(token=token) for token in queryset)
        self.message_user(
            request,
            _("%(done)d revoked, %(skipped)d were revoked already.")
            % {"done": revoked, "skipped": queryset.count() - revoked},
            messages.SUCCESS,
        )

    @admin.action(
        description=_("Give selected tokens new secrets (printed codes stop working)"),
        permissions=["change"],
    )
    def replace_secrets(
        self, request: HttpRequest, queryset: QuerySet[OnboardingToken]
    ) -> HttpResponse | None:
        tokens = list(queryset.select_related("domain__provider"))
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": _("Give new secrets?"),
                "message": _(
                    "These tokens get new secrets. Codes printed or sent before stop working at "
                    "once; their uses so far are kept. The new codes are shown once on the next "
                    "page."
                ),
                "items": [f"{token.name} ({token.domain})" for token in tokens],
                "ids": [token.pk for token in tokens],
                "action": "replace_secrets",
                "button": _("Yes, give new secrets"),
                "back_url": reverse("admin:providers_onboardingtoken_changelist"),
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/confirm_selection.html", context)
        issued = [onboarding.replace_secret(token=token) for token in tokens]
        return self._show_codes(request, issued, str(_("New secrets")))

    def _show_codes(
        self, request: HttpRequest, issued: list[onboarding.IssuedToken], title: str
    ) -> HttpResponse:
        """The tokens' printable page, shown once: the secrets are in no URL and not stored."""
        rows = []
        for item in issued:
            try:
                card = onboarding.token_card(item)
            except qr.QRFormatError as exc:
                rows.append({"issued": item, "error": str(exc)})
                continue
            rows.append(
                {
                    "issued": item,
                    "card": card,
                    "code": sheets.printable(card.qr_text),
                    "pdf_base64": base64.b64encode(sheets.pdf([card], poster=True)).decode(),
                    "logo_base64": base64.b64encode(card.logo_png).decode()
                    if card.logo_png
                    else "",
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "rows": rows,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "providers/admin/onboarding_once.html", context)
