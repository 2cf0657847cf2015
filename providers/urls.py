"""URLs of providers: autoconfig documents, DCACCOUNT, the provider-side suggestion engine
and the hosted registration pages."""

from __future__ import annotations

from django.urls import path

from providers import api, views, views_registration

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
    path("dcaccount/<str:token>", api.DCAccountView.as_view(), name="dcaccount"),
    path("new_email", api.NewEmailView.as_view(), name="new-email"),
    path(
        "providers/<slug:slug>/suggest", api.ProviderSuggestView.as_view(), name="provider-suggest"
    ),
    # Hosted registration pages (providers/views_registration.py).
    path("register/<slug:slug>/", views_registration.start, name="register"),
    path("register/<slug:slug>/token", views_registration.token, name="register-token"),
    path("register/<slug:slug>/address", views_registration.address, name="register-address"),
    path("register/<slug:slug>/password", views_registration.password, name="register-password"),
    path("register/<slug:slug>/exit", views_registration.leave, name="register-exit"),
    path("register/<slug:slug>/logo", views_registration.logo, name="register-logo"),
]
