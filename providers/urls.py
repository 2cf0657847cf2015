"""URLs of providers: autoconfig documents, DCACCOUNT, the provider-side suggestion engine."""

from __future__ import annotations

from django.urls import path

from providers import api, views

urlpatterns = [
    path(
        ".well-known/autoconfig/mail/config-v1.1.xml",
        views.thunderbird_autoconfig,
        name="autoconfig-wellknown",
    ),
    path("mail/config-v1.1.xml", views.thunderbird_autoconfig, name="autoconfig"),
    path("autodiscover/autodiscover.xml", views.autodiscover, name="autodiscover"),
    path("Autodiscover/Autodiscover.xml", views.autodiscover),
    path("mobileconfig", views.mobileconfig, name="mobileconfig"),
    path("dcaccount/<str:token>", views.dcaccount, name="dcaccount"),
    path("new_email", views.new_email, name="new-email"),
    path(
        "providers/<slug:slug>/suggest", api.ProviderSuggestView.as_view(), name="provider-suggest"
    ),
]
