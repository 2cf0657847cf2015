"""The push proxy in the admin: subscriptions (what is watched, what happened) and monitors."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from pushproxy.models import MonitorWorker, PushSubscription, username_hash
from pushproxy.services import monitors, subscriptions


@admin.register(PushSubscription)
class PushSubscriptionAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "user",
        "host",
        "mailbox",
        "client_id",
        "status",
        "mode",
        "last_event_at",
        "pushes_sent",
        "push_failures",
        "error",
        "created_at",
    ]
    list_filter = ["status", "mode", "host", "security"]
    search_fields = ["public_id", "host", "client_id", "username"]
    date_hierarchy = "created_at"
    actions = ["end_selected"]
    fieldsets = [
        (
            "Subscription",
            {"fields": ["public_id", "client_id", "status", "mode", "error", "monitor"]},
        ),
        ("IMAP", {"fields": ["host", "port", "security", "user", "mailbox"]}),
        ("Endpoints", {"fields": ["new_mail_endpoint", "reconnect_endpoint"]}),
        (
            "Activity",
            {
                "fields": [
                    "created_at",
                    "activated_at",
                    "ended_at",
                    "last_event_at",
                    "last_event_type",
                    "pushes_sent",
                    "push_failures",
                ]
            },
        ),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Everything: a subscription is made by its app and ended by it or by the action.
        return [str(field) for fieldset in self.fieldsets for field in fieldset[1]["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_end_permission(self, request: HttpRequest) -> bool:
        # Ending logs sessions out and pushes: the model's change permission (the form
        # itself stays read-only for everyone, see has_change_permission).
        return request.user.has_perm("pushproxy.change_pushsubscription")

    def delete_model(self, request: HttpRequest, obj: PushSubscription) -> None:
        subscriptions.delete_subscriptions(PushSubscription.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PushSubscription]) -> None:
        # Like the API's DELETE: a live subscription's session logs out (no push).
        subscriptions.delete_subscriptions(queryset)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[PushSubscription], search_term: str
    ) -> tuple[QuerySet[PushSubscription], bool]:
        # In privacy mode no user name is stored, but an operator who knows one can still
        # find its subscriptions: the keyed hash of the typed name is looked up.
        results, distinct = super().get_search_results(request, queryset, search_term)
        if search_term.strip():
            results = results | queryset.filter(username_hash=username_hash(search_term.strip()))
        return results, distinct

    @admin.display(description="IMAP user", ordering="username")
    def user(self, sub: PushSubscription) -> str:
        if settings.PUSHPROXY_PRIVACY or not sub.username:
            return f"(private #{sub.username_hash[:8]})"
        return sub.username

    @admin.display(description="newMail endpoint")
    def new_mail_endpoint(self, sub: PushSubscription) -> str:
        return f"{sub.get_new_mail_format_display()} to {sub.endpoint_host('newMail')}"

    @admin.display(description="reconnect endpoint")
    def reconnect_endpoint(self, sub: PushSubscription) -> str:
        return f"{sub.get_reconnect_format_display()} to {sub.endpoint_host('reconnect')}"

    @admin.action(
        description="End selected subscriptions (logs out, sends the reconnect push)",
        permissions=["end"],
    )
    def end_selected(self, request: HttpRequest, queryset: QuerySet[PushSubscription]) -> None:
        ended, skipped = subscriptions.end_subscriptions(queryset)
        self.message_user(
            request,
            f"{ended} ended, {skipped} skipped (not live).",
            messages.SUCCESS if ended else messages.WARNING,
        )


@admin.register(MonitorWorker)
class MonitorWorkerAdmin(admin.ModelAdmin):
    list_display = [
        "worker_id",
        "state",
        "sessions",
        "shards",
        "lease",
        "last_renewal",
        "hostname",
        "pid",
        "started_at",
    ]
    list_filter = ["state", "hostname"]
    search_fields = ["worker_id", "hostname"]
    readonly_fields = [
        "worker_id",
        "queue",
        "hostname",
        "pid",
        "state",
        "started_at",
        "heartbeat_at",
        "sessions",
        "shards",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        # One look at Redis per page: the summary above the rows and each row's lease.
        summary = monitors.fleet_summary()
        request.fleet_summary = summary  # type: ignore[attr-defined]
        return super().changelist_view(request, {**(extra_context or {}), "fleet": summary})

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        summary = getattr(request, "fleet_summary", None)
        for worker in changelist.result_list:  # the page's rows (cached by the queryset)
            worker.lease_text = _lease_text(summary, worker.worker_id)
        return changelist

    @admin.display(description="last renewal", ordering="heartbeat_at")
    def last_renewal(self, worker: MonitorWorker) -> Any:
        # Leases and the database row are renewed in the same round (run_push_monitor).
        return worker.heartbeat_at

    @admin.display(description="lease (Redis)")
    def lease(self, worker: MonitorWorker) -> str:
        return str(getattr(worker, "lease_text", "-"))


def _lease_text(summary: monitors.FleetSummary | None, worker_id: str) -> str:
    if summary is None or summary.embedded:
        return "-"
    if summary.redis_error:
        return "unknown"
    if worker_id in summary.leases:
        return f"live, {summary.leases[worker_id]} shards"
    return "lapsed"
