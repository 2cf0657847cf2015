"""URLs of the accounts API, mounted under /api/v1/ by portal.urls."""

from __future__ import annotations

from django.urls import path

from accounts import api

urlpatterns = [
    path("register", api.RegisterView.as_view(), name="register"),
    path("register/verify", api.RegisterVerifyView.as_view(), name="register-verify"),
]
