"""Named input and output serializers of the providers API (provider list, suggestions)."""

from __future__ import annotations

from rest_framework import serializers


class ProviderOut(serializers.Serializer):
    """One provider-list entry (shared/specs/provisioner.md); `countries` is ours."""

    id = serializers.CharField(help_text="The provider's main domain (A-label).")
    # Serializer has a `label` attribute of its own; DRF's metaclass takes the field out.
    label = serializers.CharField()  # type: ignore[assignment]
    paid = serializers.BooleanField()
    languages = serializers.ListField(child=serializers.CharField())
    api = serializers.CharField(help_text="Registration URL with {firstname}, {lastname}, {email}.")
    tos_url = serializers.URLField()
    privacy_url = serializers.URLField()
    sells_domain = serializers.BooleanField()
    countries = serializers.ListField(child=serializers.CharField())
    icon = serializers.URLField(required=False)


class NameQueryIn(serializers.Serializer):
    """A person's name (Thunderbird splits it at the last space) and optional country."""

    first_name = serializers.CharField(required=False, allow_blank=True, trim_whitespace=True)
    last_name = serializers.CharField(required=False, allow_blank=True, trim_whitespace=True)
    country = serializers.CharField(
        required=False, allow_blank=True, help_text="ISO 3166-1 alpha-2, e.g. DE."
    )


class SuggestionQueryIn(NameQueryIn):
    providers = serializers.CharField(
        required=False, allow_blank=True, help_text="Provider ids (from the list), comma-separated."
    )
    version = serializers.CharField(
        required=False, allow_blank=True, help_text="Thunderbird sends 2; the answer is v2 always."
    )
    debug = serializers.BooleanField(
        required=False, default=False, help_text="Also show status and latency on successes."
    )


class SuggestionEntryOut(serializers.Serializer):
    """One provider's entry. Successful entries may carry the provider's own extra keys."""

    provider = serializers.CharField()
    succeeded = serializers.BooleanField()
    addresses = serializers.ListField(child=serializers.JSONField(), required=False)
    price = serializers.FloatField(required=False)
    status = serializers.ChoiceField(
        choices=["ok", "timeout", "error", "declined", "unknown"], required=False
    )
    latency_ms = serializers.IntegerField(required=False)


class ErrorOut(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class DCAccountOut(serializers.Serializer):
    """A DCACCOUNT success (specs/qr.md): Delta Chat reads email and password."""

    email = serializers.EmailField()
    password = serializers.CharField()
    expiry = serializers.CharField(help_text="The accounts' lifetime, e.g. 30d; or never.")
    ttl = serializers.IntegerField(allow_null=True, help_text="The lifetime in seconds.")


class DCAccountRefusalOut(serializers.Serializer):
    """A DCACCOUNT refusal: Delta Chat shows `reason` to the person."""

    reason = serializers.CharField()
    code = serializers.CharField()
