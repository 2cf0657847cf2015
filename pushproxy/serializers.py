"""Named input/output serializers of the push subscription API (specs/push-proxy.md).

Field names follow the wire format (clientId, newMail): camelCase. Inputs take JSON
strings only for text (no number silently turned into a password) and refuse unknown keys.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from providers.serializers import ErrorOut  # the API's one {code, message} component
from pushproxy import imap, webpush
from pushproxy.models import PushSubscription, Status

__all__ = ["ErrorOut"]

MAX_URL_LENGTH = 2000
MAX_PASSWORD_LENGTH = 1024


class _Text(serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        value: str = super().to_internal_value(data)
        if "\x00" in value or "\r" in value or "\n" in value:
            raise serializers.ValidationError("Must not contain NUL or line breaks.")
        return value


class _Strict(serializers.Serializer[Any]):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Must be a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


class ImapIn(_Strict):
    host = _Text(max_length=253)
    port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    security = serializers.ChoiceField(choices=imap.SECURITY_CHOICES, default=imap.TLS)
    username = _Text(max_length=320)
    password = _Text(max_length=MAX_PASSWORD_LENGTH, write_only=True, trim_whitespace=False)
    mailbox = _Text(max_length=200, default="INBOX")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs.setdefault("port", imap.DEFAULT_PORTS[attrs["security"]])
        return attrs


class KeysIn(_Strict):
    p256dh = _Text(max_length=100)
    auth = _Text(max_length=40)

    def validate(self, attrs: dict[str, str]) -> dict[str, str]:
        try:
            webpush.SubscriptionKeys.parse(attrs["p256dh"], attrs["auth"])
        except webpush.InvalidKeys as exc:
            raise serializers.ValidationError(str(exc)) from None
        return attrs


class EndpointIn(_Strict):
    url = _Text(max_length=MAX_URL_LENGTH)
    keys = KeysIn(required=False)
    format = serializers.ChoiceField(choices=["simplepush"], required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("keys") and attrs.get("format"):
            raise serializers.ValidationError("An endpoint with keys is Web Push, not simplepush.")
        return attrs


class EndpointsIn(_Strict):
    newMail = EndpointIn()
    reconnect = EndpointIn()


class SubscriptionCreateIn(_Strict):
    imap = ImapIn()
    endpoints = EndpointsIn()
    clientId = _Text(max_length=200)


class SubscriptionCreatedOut(serializers.Serializer[Any]):
    id = serializers.CharField()
    token = serializers.CharField(help_text="Bearer token for GET and DELETE; shown once.")
    status = serializers.ChoiceField(choices=["active", "pending"])
    mode = serializers.ChoiceField(choices=["idle", "poll"], required=False)
    mailbox = serializers.CharField(required=False)


class LastEventOut(serializers.Serializer[Any]):
    # Text, not a choice: an enum named "type" would rename the registration API's TypeEnum.
    type = serializers.CharField(help_text="newMail or reconnect")
    at = serializers.DateTimeField()


class SubscriptionOut(serializers.Serializer[Any]):
    id = serializers.CharField(source="public_id")
    status = serializers.ChoiceField(
        choices=[Status.PENDING, Status.ACTIVE, Status.LOST, Status.FAILED],
        help_text="pending: logging in; active: watching; lost: the reconnect push was sent, "
        "subscribe again; failed: the login failed after a 202 (see error)",
    )
    mode = serializers.ChoiceField(choices=["idle", "poll", ""], help_text="empty until active")
    mailbox = serializers.CharField()
    clientId = serializers.CharField(source="client_id")
    created = serializers.DateTimeField(source="created_at")
    lastEvent = serializers.SerializerMethodField()
    pushesSent = serializers.IntegerField(source="pushes_sent")
    error = serializers.CharField(help_text="why it is lost or failed (e.g. bye, imap_auth_failed)")

    @extend_schema_field(LastEventOut(allow_null=True))
    def get_lastEvent(self, sub: PushSubscription) -> dict[str, Any] | None:
        if sub.last_event_at is None:
            return None
        return {"type": sub.last_event_type, "at": sub.last_event_at.isoformat()}
