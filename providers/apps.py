"""App config for providers: wires cache invalidation of the served documents."""

from __future__ import annotations

from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "Providers"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from providers.models import Provider, ProviderDomain, ServerSetting
        from providers.services import documents

        # Any change to what the documents are built from invalidates every served copy,
        # whether it came from admin, an import or a shell.
        for model in (Provider, ProviderDomain, ServerSetting):
            post_save.connect(documents.catalog_changed, sender=model, dispatch_uid=f"doc-{model}")
            post_delete.connect(
                documents.catalog_changed, sender=model, dispatch_uid=f"doc-del-{model}"
            )
