"""The mail-account console: find, create, disable, enable, reset passwords, end
self-service sessions, delete, and print onboarding sheets (DCLOGIN codes, shown once)."""

from __future__ import annotations

import base64
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from accounts.models import (
    AccountSession,
    AccountStatus,
    CreatedVia,
    MailAccount,
    ReservedName,
    SheetJob,
    ThirdPartyID,
)
from accounts.services import accounts as account_services
from accounts.services import sessions as session_services
from accounts.services import sheets as sheet_services
from portal.errors import PortalError
from providers import sheets
from providers.models import ProviderDomain


class ThirdPartyIDInline(admin.TabularInline):
    model = ThirdPartyID
    extra = 0
    fields = ["kind", "value", "verified_at", "created_at"]
    readonly_fields = ["kind", "value", "verified_at", "created_at"]
    can_delete = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # added by their owner through registration or self-service


class AccountSessionInline(admin.TabularInline):
    """The owner's self-service sessions; deleting one ends it (the token hash is not shown)."""

    model = AccountSession
    extra = 0
    fields = ["created_at", "last_used_at", "expires_at", "ip", "user_agent"]
    readonly_fields = ["created_at", "last_used_at", "expires_at", "ip", "user_agent"]
    can_delete = True
    verbose_name = _("self-service session")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # opened by logging in, never by an administrator


class CreateAccountForm(forms.Form):
    """Input of the admin's "add account" page; the rules are checked by the service."""

    domain = forms.ModelChoiceField(
        queryset=ProviderDomain.objects.filter(provider__hosted=True).select_related("provider"),
        help_text=_("Only domains of hosted providers."),
    )
    local_part = forms.CharField(label=_("user name"), max_length=64)
    full_name = forms.CharField(max_length=200, required=False)
    password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_("Leave empty to generate a strong password, shown to you once."),
    )
    quota_mb = forms.IntegerField(
        label=_("quota (MB)"), required=False, min_value=0, help_text=_("Empty: provider's.")
    )


# What an administrator edits on an account's page; everything else goes through services.
EDITABLE_FIELDS = ["full_name", "quota_mb", "expires_at"]


@admin.register(MailAccount)
class MailAccountAdmin(admin.ModelAdmin):
    list_display = [
        "address_display",
        "provider_name",
        "status",
        "mailbox_state",
        "created_via",
        "created_at",
    ]
    # Also ?onboarding_token=<id> (linked from a token's page), without a sidebar filter.
    list_filter = ["domain__provider", "status", "mailbox_state", "created_via"]
    search_fields = ["local_part", "domain__name", "third_pids__value", "full_name"]
    list_select_related = ["domain__provider"]
    readonly_fields = [
        "address_display",
        "status",
        "mailbox_state",
        "created_via",
        "created_at",
        "updated_at",
        "password_changed_at",
        "onboarding_token",
    ]
    fieldsets = [
        (None, {"fields": ["address_display", *EDITABLE_FIELDS]}),
        (
            _("State"),
            {
                "fields": [
                    "status",
                    "mailbox_state",
                    "created_via",
                    "created_at",
                    "updated_at",
                    "password_changed_at",
                    "onboarding_token",
                ]
            },
        ),
    ]
    inlines = [ThirdPartyIDInline, AccountSessionInline]
    actions = [
        "approve_accounts",
        "disable_accounts",
        "enable_accounts",
        "reset_passwords",
        "end_sessions",
        "onboarding_sheet",
    ]
    date_hierarchy = "created_at"

    @admin.display(description=_("address"), ordering="local_part")
    def address_display(self, account: MailAccount) -> str:
        return account.address

    @admin.display(description=_("provider"), ordering="domain__provider__name")
    def provider_name(self, account: MailAccount) -> str:
        return account.domain.provider.name

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[MailAccount], search_term: str
    ) -> tuple[QuerySet[MailAccount], bool]:
        # A whole address "local@domain" matches that account exactly.
        local, at, domain = search_term.strip().rpartition("@")
        if at and local and domain and " " not in search_term.strip():
            exact = queryset.filter(local_part=local.lower(), domain__name=domain.lower())
            if exact.exists():
                return exact, False
        return super().get_search_results(request, queryset, search_term)

    # Creation has side effects (the mailbox) and a secret to show once: our own page.
    # (admin_site.admin_view already marks every admin page never_cache.)
    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            return HttpResponseRedirect(reverse("admin:index"))
        form = CreateAccountForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            password = data["password"] or account_services.generate_password()
            try:
                account = account_services.create_account(
                    domain=data["domain"],
                    local_part=data["local_part"],
                    password=password,
                    full_name=data["full_name"],
                    created_via=CreatedVia.ADMIN,
                )
            except PortalError as exc:
                form.add_error(_field_for(exc.code), exc.message)
            else:
                if data["quota_mb"] is not None:
                    account.quota_mb = data["quota_mb"]
                    account.save(update_fields=["quota_mb", "updated_at"])
                self.log_addition(request, account, [{"added": {}}])
                return self._show_passwords(
                    request,
                    [(account, password if not data["password"] else None)],
                    str(_("Account created")),
                    login=[(account, password)],
                )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Add mail account"),
            "form": form,
            "opts": self.model._meta,
            "add": True,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "accounts/admin/create_account.html", context)

    def _show_passwords(
        self,
        request: HttpRequest,
        rows: list[tuple[MailAccount, str | None]],
        title: str,
        *,
        login: list[tuple[MailAccount, str]] | None = None,
    ) -> HttpResponse:
        """Render new passwords once; the response is never cached or stored anywhere.

        With them the accounts' DCLOGIN codes (the only moment one can be made): inline,
        as PNG/SVG downloads and as a PDF sheet, all inside this one response. `login`:
        (account, password) for the codes when `rows` hides a password the admin typed.
        """
        if login is None:
            login = [(account, password) for account, password in rows if password]
        codes = sheet_services.login_codes(login, shown_to=request.user)
        pdf = sheets.pdf([code.card for code in codes]) if codes else b""
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "rows": rows,
            "codes": codes,
            "pdf_base64": base64.b64encode(pdf).decode(),
            "opts": self.model._meta,
        }
        # admin_site.admin_view adds no-store (never_cache) to the response.
        return TemplateResponse(request, "accounts/admin/passwords_once.html", context)

    def save_model(self, request: HttpRequest, obj: MailAccount, form: Any, change: bool) -> None:
        # The change page (adding is add_view's): only the fields it changed. Password,
        # status and mailbox state are the services' and may have changed since the page
        # loaded the row (a password reset, the lifetime pass disabling the account).
        fields = [name for name in form.changed_data if name in EDITABLE_FIELDS]
        if fields:
            obj.save(update_fields=[*fields, "updated_at"])

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Django runs this page in one transaction; deleting an account must commit the
        # row's "deleting" mark before the mail server is asked (delete_account), so the page
        # runs without one. delete_model is its only write.
        try:
            response: HttpResponse = self._delete_view(  # type: ignore[attr-defined]
                request, object_id, extra_context
            )
            return response
        except PortalError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.path.removesuffix("delete/"))

    def delete_model(self, request: HttpRequest, obj: MailAccount) -> None:
        account_services.delete_account(account=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[MailAccount]) -> None:
        for account in queryset.select_related("domain__provider"):
            try:
                account_services.delete_account(account=account)
            except PortalError as exc:
                self.message_user(request, f"{account.address}: {exc.message}", messages.ERROR)

    def _set_status(
        self, request: HttpRequest, queryset: QuerySet[MailAccount], status: AccountStatus
    ) -> None:
        done = skipped = 0
        for account in queryset.select_related("domain__provider"):
            if account_services.set_status(account=account, status=status):
                done += 1
            else:
                skipped += 1
        self.message_user(
            request,
            _("%(done)d changed, %(skipped)d already %(status)s.")
            % {"done": done, "skipped": skipped, "status": status.label},
            messages.SUCCESS,
        )

    @admin.action(
        description=_("Approve selected accounts awaiting approval"), permissions=["change"]
    )
    def approve_accounts(self, request: HttpRequest, queryset: QuerySet[MailAccount]) -> None:
        waiting = queryset.filter(status=AccountStatus.APPROVAL).select_related("domain__provider")
        approved = sum(
            account_services.set_status(account=account, status=AccountStatus.ACTIVE)
            for account in waiting
        )
        self.message_user(
            request,
            _("%(done)d approved, %(skipped)d skipped (not awaiting approval).")
            % {"done": approved, "skipped": queryset.count() - approved},
            messages.SUCCESS,
        )

    @admin.action(
        description=_("Disable selected accounts (they can no longer log in)"),
        permissions=["change"],
    )
    def disable_accounts(self, request: HttpRequest, queryset: QuerySet[MailAccount]) -> None:
        self._set_status(request, queryset, AccountStatus.DISABLED)

    @admin.action(description=_("Enable selected accounts"), permissions=["change"])
    def enable_accounts(self, request: HttpRequest, queryset: QuerySet[MailAccount]) -> None:
        self._set_status(request, queryset, AccountStatus.ACTIVE)

    @admin.action(
        description=_("Reset passwords of selected accounts (shown once)"), permissions=["change"]
    )
    def reset_passwords(
        self, request: HttpRequest, queryset: QuerySet[MailAccount]
    ) -> HttpResponse | None:
        rows: list[tuple[MailAccount, str | None]] = []
        failed = 0
        for account in queryset.select_related("domain__provider"):
            try:
                rows.append((account, account_services.reset_password(account=account)))
            except PortalError as exc:
                failed += 1
                self.message_user(request, f"{account.address}: {exc.message}", messages.ERROR)
        if not rows:
            return None
        title = _("%(done)d passwords reset, %(failed)d failed") % {
            "done": len(rows),
            "failed": failed,
        }
        return self._show_passwords(request, rows, str(title))

    @admin.action(
        description=_("End the self-service sessions of selected accounts"),
        permissions=["change"],
    )
    def end_sessions(self, request: HttpRequest, queryset: QuerySet[MailAccount]) -> None:
        ended = accounts_with = 0
        for account in queryset.select_related("domain__provider"):
            count = session_services.end_other_sessions(account=account, keep=None)
            ended += count
            accounts_with += bool(count)
        self.message_user(
            request,
            _("%(ended)d sessions of %(accounts)d accounts ended, %(skipped)d had none.")
            % {
                "ended": ended,
                "accounts": accounts_with,
                "skipped": queryset.count() - accounts_with,
            },
            messages.SUCCESS,
        )

    @admin.action(
        description=_("Print an onboarding sheet (new passwords, DCLOGIN codes)"),
        permissions=["change"],
    )
    def onboarding_sheet(
        self, request: HttpRequest, queryset: QuerySet[MailAccount]
    ) -> HttpResponse | None:
        ids = list(queryset.values_list("pk", flat=True))
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": _("Print an onboarding sheet?"),
                "message": ngettext(
                    "The password of this account is reset: its current password stops "
                    "working and open sessions end. The new password goes into a DCLOGIN code "
                    "on an A4 sheet, built in the background.",
                    "The passwords of these %(count)d accounts are reset: their current "
                    "passwords stop working and open sessions end. The new passwords go into "
                    "DCLOGIN codes on an A4 sheet, built in the background.",
                    len(ids),
                )
                % {"count": len(ids)},
                "note": _(
                    "The sheet can be downloaded once, by you, within an hour; then it is deleted."
                ),
                "ids": ids,
                "action": "onboarding_sheet",
                "button": _("Yes, reset the passwords and print"),
                "back_url": reverse("admin:accounts_mailaccount_changelist"),
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/confirm_selection.html", context)
        try:
            job = sheet_services.start_sheet(account_ids=ids, created_by=request.user)
        except PortalError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return None
        return HttpResponseRedirect(reverse("admin:accounts_sheetjob_progress", args=[job.pk]))


def _field_for(code: str) -> str | None:
    """Which form field a service error belongs to (None: the whole form)."""
    return {
        "invalid_username": "local_part",
        "id_exists": "local_part",
        "weak_password": "password",
        "reg_disabled": "domain",
    }.get(code)


@admin.register(ReservedName)
class ReservedNameAdmin(admin.ModelAdmin):
    list_display = ["name", "note"]
    search_fields = ["name", "note"]


@admin.register(SheetJob)
class SheetJobAdmin(admin.ModelAdmin):
    """Batch onboarding sheets: progress while the task runs, then one download.

    Each administrator sees and downloads only the sheets they asked for (they hold the
    passwords that administrator just set), and only while they may change mail accounts:
    the permission the sheet action itself needs.
    """

    list_display = ["__str__", "state", "progress", "created_at", "expires_at"]
    list_filter = ["state"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[SheetJob]:
        queryset: QuerySet[SheetJob] = super().get_queryset(request).defer("content")
        return queryset.filter(created_by_id=request.user.pk)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by the accounts list's action

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("accounts.change_mailaccount")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    @admin.display(description=_("progress"))
    def progress(self, job: SheetJob) -> str:
        return f"{job.done + job.failed} / {job.total}"

    def get_urls(self) -> list[Any]:
        own = [
            path(
                "<int:job_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name="accounts_sheetjob_progress",
            ),
            path(
                "<int:job_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name="accounts_sheetjob_download",
            ),
        ]
        return own + super().get_urls()

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        return HttpResponseRedirect(
            reverse("admin:accounts_sheetjob_progress", args=[int(object_id)])
        )

    def progress_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        job = self.get_queryset(request).filter(pk=job_id).first()
        context = {
            **self.admin_site.each_context(request),
            "title": _("Onboarding sheet"),
            "job": job,
            "opts": self.model._meta,
            "refresh": job is not None
            and job.state in (SheetJob.State.QUEUED, SheetJob.State.RUNNING),
        }
        return TemplateResponse(request, "accounts/admin/sheet_progress.html", context)

    def download_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method != "POST":  # a download deletes the sheet: never on a GET
            return HttpResponseRedirect(reverse("admin:accounts_sheetjob_progress", args=[job_id]))
        try:
            pdf = sheet_services.take_sheet(job_id=job_id, user=request.user)
        except PortalError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:accounts_sheetjob_changelist"))
        response = HttpResponse(pdf, content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="onboarding-sheet-{job_id}.pdf"'
        return response
