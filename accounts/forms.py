"""Forms of the self-service pages: input validation only (the rules are the services')."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

# Sanity bounds; the password policy itself is accounts.services.accounts.check_password_policy.
MAX_PASSWORD_LENGTH = 1024


class LoginForm(forms.Form):
    username = forms.CharField(
        label=_("Mail address"),
        max_length=320,
        widget=forms.EmailInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    password = forms.CharField(
        label=_("Password"),
        max_length=MAX_PASSWORD_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class FullNameForm(forms.Form):
    full_name = forms.CharField(
        label=_("Full name"),
        max_length=200,
        required=False,
        help_text=_("Shown as the sender's name in the mail you send."),
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
    )


class PasswordForm(forms.Form):
    current_password = forms.CharField(
        label=_("Current password"),
        max_length=MAX_PASSWORD_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    password = forms.CharField(
        label=_("New password"),
        max_length=MAX_PASSWORD_LENGTH,
        strip=False,
        help_text=_("At least 8 characters. Your other sessions and mail apps are logged out."),
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password_again = forms.CharField(
        label=_("New password again"),
        max_length=MAX_PASSWORD_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean() or {}
        if data.get("password") != data.get("password_again") and "password" in data:
            self.add_error("password_again", _("The two new passwords differ."))
        return data
