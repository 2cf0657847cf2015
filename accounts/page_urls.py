"""URLs of the self-service pages, mounted under /account/ by portal.urls."""

from __future__ import annotations

from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.overview, name="self-service"),
    path("login", views.login_page, name="self-service-login"),
    path("logout", views.logout_page, name="self-service-logout"),
    path("full-name", views.save_full_name, name="self-service-full-name"),
    path("password", views.change_password, name="self-service-password"),
    path(
        "sessions/<int:session_id>/revoke",
        views.revoke_session,
        name="self-service-revoke",
    ),
]
