"""Forms of the hosted registration pages: they validate input, the service decides."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from providers.domains import to_unicode
from providers.models import Provider

EXIT_ACTIONS = ("cancel", "back", "close")


class FlowForm(forms.Form):
    """Every step carries the signed state of the flow (providers.services.registration)."""

    state = forms.CharField(widget=forms.HiddenInput, max_length=4000)


class TokenForm(FlowForm):
    token = forms.CharField(
        label=_("Onboarding token"),
        max_length=200,
        help_text=_("The code from your invitation."),
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )


class AddressForm(FlowForm):
    first_name = forms.CharField(
        label=_("First name"),
        max_length=200,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "given-name"}),
    )
    last_name = forms.CharField(
        label=_("Last name"),
        max_length=200,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "family-name"}),
    )
    local_part = forms.CharField(
        label=_("User name"),
        max_length=200,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "username",
                "autocapitalize": "none",
                "spellcheck": "false",
            }
        ),
    )
    domain = forms.ChoiceField(label=_("Domain"))
    # One of the offered alternatives, sent by its own submit button (works without JS).
    choose = forms.CharField(required=False, max_length=200)
    # "Change address" on the password step shows this step again without checking it.
    edit = forms.BooleanField(required=False)

    def __init__(self, *args: Any, provider: Provider, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["domain"]
        if isinstance(field, forms.ChoiceField):  # always; narrows the type
            field.choices = [
                (domain.name, "@" + to_unicode(domain.name)) for domain in provider.domains.all()
            ]

    def chosen_local_part(self) -> str:
        """The alternative clicked, if any, else what was typed."""
        choice: str = self.cleaned_data.get("choose") or ""
        typed: str = self.cleaned_data["local_part"]
        return choice.rpartition("@")[0] or choice or typed


class PasswordForm(FlowForm):
    password = forms.CharField(
        label=_("Password"),
        strip=False,
        max_length=1024,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password_again = forms.CharField(
        label=_("Password again"),
        strip=False,
        max_length=1024,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    accept_terms = forms.BooleanField(required=False)

    def __init__(
        self, *args: Any, terms_required: bool, min_length: int = 8, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.terms_required = terms_required
        # The provider's policy, shown before the first try (accounts' check_password_policy).
        self.fields["password"].help_text = _(
            "At least %(count)d characters. Not a common password, and not like your name "
            "or address."
        ) % {"count": min_length}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        first, second = cleaned.get("password"), cleaned.get("password_again")
        if first is not None and second is not None and first != second:
            self.add_error("password_again", _("The two passwords differ."))
        if self.terms_required and not cleaned.get("accept_terms"):
            self.add_error("accept_terms", _("Accept the terms of service and the privacy policy."))
        return cleaned


class ExitForm(forms.Form):
    """Leaving the flow needs no state: it changes nothing and answers a fixed document."""

    action = forms.ChoiceField(choices=[(action, action) for action in EXIT_ACTIONS])
