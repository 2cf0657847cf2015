"""App config for the project package (it holds shared commands and templates)."""

from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    default = True  # of the two configs in this module (the other is the admin's)
    name = "portal"
    verbose_name = "mailportal"

    def ready(self) -> None:
        # Security events of the admin (portal/audit.py): logins and its history entries.
        from django.contrib.admin.models import LogEntry
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django.db.models.signals import post_save

        from portal import audit

        user_logged_in.connect(audit.log_admin_login, dispatch_uid="portal.audit.login")
        user_login_failed.connect(audit.log_admin_login_failed, dispatch_uid="portal.audit.fail")
        post_save.connect(audit.log_admin_history, sender=LogEntry, dispatch_uid="portal.audit.log")


class PortalAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the portal's admin site (portal/adminsite.py)."""

    default = False
    default_site = "portal.adminsite.PortalAdminSite"
