"""URLs of the accounts API, mounted under /api/v1/ by portal.urls."""

from __future__ import annotations

from django.urls import path

from accounts import account_api, api

urlpatterns = [
    path("register", api.RegisterView.as_view(), name="register"),
    path("register/verify", api.RegisterVerifyView.as_view(), name="register-verify"),
    # Account self-service (specs/account-api.md).
    path("account", account_api.AccountView.as_view(), name="account"),
    path("account/login-prep", account_api.LoginPrepView.as_view(), name="account-login-prep"),
    path("account/login", account_api.LoginView.as_view(), name="account-login"),
    path("account/logout", account_api.LogoutView.as_view(), name="account-logout"),
    path("account/password", account_api.PasswordView.as_view(), name="account-password"),
    path("account/full-name", account_api.FullNameView.as_view(), name="account-full-name"),
    path("account/sessions", account_api.SessionsView.as_view(), name="account-sessions"),
    path(
        "account/sessions/<int:session_id>",
        account_api.SessionView.as_view(),
        name="account-session",
    ),
]
