"""URLs of the providers API, mounted under /api/v1/ by portal.urls."""

from __future__ import annotations

from django.urls import path

from providers import api

urlpatterns = [
    path("providers", api.ProviderListView.as_view(), name="provider-list"),
    path("suggestions", api.SuggestionsView.as_view(), name="suggestions"),
]
