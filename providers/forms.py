"""Forms of the hosted registration pages: they validate input, the service decides."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from providers.domains import to_unicode
from providers.models import Provider

EXIT_ACTIONS = ("cancel", "back", "close")
_ELSEWHERE = _("Choose an address at one of the provider's domains.")


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
    domain = forms.ChoiceField(
        label=_("Domain"),
        error_messages={"required": _ELSEWHERE, "invalid_choice": _ELSEWHERE},
    )
    # One of the offered alternatives (a whole address), sent by its own submit button (works
    # without JS). It replaces the typed address, local part and domain alike.
    choose = forms.CharField(required=False, max_length=320)

    def __init__(
        self,
        data: Any = None,
        *args: Any,
        provider: Provider,
        domains: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """`domains`: the A-labels the address may be at (default: all the provider's)."""
        if data is not None and data.get("choose"):
            local_part, _at, domain = str(data["choose"]).rpartition("@")
            data = data.copy()
            data["local_part"], data["domain"] = local_part, domain.lower()
        super().__init__(data, *args, **kwargs)
        names = domains if domains is not None else [row.name for row in provider.domains.all()]
        field = self.fields["domain"]
        if isinstance(field, forms.ChoiceField):  # always; narrows the type
            field.choices = [(name, "@" + to_unicode(name)) for name in names]
        # The provider's rules, shown before the first try and tied to the field.
        self.fields["local_part"].help_text = _address_rules(provider)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # The address is one thing to the person: a refused domain is said at the address.
        for message in self.errors.pop("domain", []):
            self.add_error("local_part", message)
        return cleaned


def _address_rules(provider: Provider) -> str:
    counts = {"min": provider.username_min_length, "max": provider.username_max_length}
    if not provider.username_punctuation:
        return _("%(min)s to %(max)s characters: letters a-z and digits.") % counts
    return _(
        "%(min)s to %(max)s characters: letters a-z and digits, and %(marks)s between them."
    ) % {**counts, "marks": " ".join(provider.username_punctuation)}


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
