"""Named input/output serializers of the accounts API (in-band registration, verification).

Inputs are strict about JSON types and unknown keys: `"password": 123` or an extra key is a
bad_request, not silently coerced or ignored. The output serializers describe the answers
for the OpenAPI schema; the answers themselves are built by accounts.cpe3.
"""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from accounts import cpe3

# Sanity bounds on sizes; the real rules (lengths of names, passwords) live in the services.
MAX_ID_LENGTH = 200  # RegistrationRequest.key
MAX_PASSWORD_LENGTH = 1024
MAX_THIRD_PIDS = 10
# Field names follow the wire format (thirdPIDs, loginOnSuccess, userID): camelCase here.


class StrictCharField(serializers.CharField):
    """A JSON string only: numbers, booleans and the like are refused, not turned into text."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        value: str = super().to_internal_value(data)
        return value


class StrictBooleanField(serializers.BooleanField):
    """A JSON true or false only (DRF would also take "yes", 1, "on")."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictSerializer(serializers.Serializer[Any]):
    """Refuses keys it does not declare, and a non-object where an object belongs."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["Must be a JSON object."]}, code="invalid"
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


class EnvelopeIn(StrictSerializer):
    """The CPE message envelope; subclasses fix `type` and the payload."""

    message_type = ""

    id = StrictCharField(max_length=MAX_ID_LENGTH, trim_whitespace=False)
    type = StrictCharField(trim_whitespace=False)
    to = serializers.ListField(child=StrictCharField(max_length=253), min_length=1, max_length=1)

    def validate_id(self, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise serializers.ValidationError("Use printable characters without spaces around.")
        return value

    def validate_type(self, value: str) -> str:
        if value != self.message_type:
            raise serializers.ValidationError(f"Must be {self.message_type}.")
        return value


class ThirdPIDIn(StrictSerializer):
    type = serializers.ChoiceField(choices=["email", "msisdn"])
    value = StrictCharField(max_length=320)


class RegisterPayloadIn(StrictSerializer):
    username = StrictCharField(required=False, max_length=256)
    thirdPIDs = serializers.ListField(child=ThirdPIDIn(), required=False, max_length=MAX_THIRD_PIDS)
    password = StrictCharField(
        max_length=MAX_PASSWORD_LENGTH, trim_whitespace=False, write_only=True
    )
    loginOnSuccess = StrictBooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "username" not in attrs and not attrs.get("thirdPIDs"):
            raise serializers.ValidationError(
                {"username": "Give a username, or a third-party ID to register with."}
            )
        return attrs


class RegisterIn(EnvelopeIn):
    """`POST /api/v1/register`: a urn:cadmium:profile:register message."""

    message_type = cpe3.REGISTER
    payload = RegisterPayloadIn()


class VerifyPayloadIn(StrictSerializer):
    userID = StrictCharField(required=False, max_length=400)
    email = StrictCharField(required=False, max_length=320)
    code = StrictCharField(
        validators=[RegexValidator(r"^[0-9]{6}$", "Six digits, as in the mail.")]
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("userID" in attrs) == ("email" in attrs):
            raise serializers.ValidationError({"userID": "Give userID or email (one of them)."})
        return attrs


class RegisterVerifyIn(EnvelopeIn):
    """`POST /api/v1/register/verify`: confirm the code mailed at registration."""

    message_type = cpe3.VERIFY
    payload = VerifyPayloadIn()


# ----- answers (schema only) --------------------------------------------------------------


class LoginErrorOut(serializers.Serializer[Any]):
    errID = serializers.CharField()
    errText = serializers.CharField()


class RegisterResultOut(serializers.Serializer[Any]):
    userID = serializers.CharField(
        help_text="@local@domain, or the email third-party ID when no username was given."
    )
    address = serializers.EmailField(
        required=False, help_text="Extension: the mailbox address, when userID is not it."
    )
    verification = serializers.ChoiceField(
        choices=["pending", "done"], required=False, help_text="Extension: email verification."
    )
    approval = serializers.ChoiceField(
        choices=["pending"],
        required=False,
        help_text="Extension: the provider approves new accounts; none logs in before.",
    )
    loginError = LoginErrorOut(
        required=False,
        help_text="Extension: loginOnSuccess was asked but sessions do not exist yet.",
    )


class ErrorPayloadOut(serializers.Serializer[Any]):
    errID = serializers.CharField()
    errText = serializers.CharField()
    retryAfter = serializers.IntegerField(
        required=False, help_text="urn:cadmium:ratelimit: seconds to wait."
    )


class EnvelopeOut(serializers.Serializer[Any]):
    id = serializers.CharField(allow_null=True)
    type = serializers.CharField()
    ok = serializers.BooleanField()


# `from` is a Python keyword, so it cannot be a class attribute; the metaclass has already
# collected the declared fields, and get_fields() copies this dict.
EnvelopeOut._declared_fields["from"] = serializers.CharField()
# Likewise `fields`, which would hide Serializer.fields.
ErrorPayloadOut._declared_fields["fields"] = serializers.DictField(
    child=serializers.CharField(), required=False, help_text="bad_request: field -> why."
)


class RegisterOut(EnvelopeOut):
    payload = RegisterResultOut()


class RegisterErrorOut(EnvelopeOut):
    payload = ErrorPayloadOut()
