"""Pure: the CPE3 message envelope of in-band registration (specs/inband-registration.md).

Builds the answers, success and failure, from plain values and portal errors. Every answer
of `POST /api/v1/register` and `POST /api/v1/register/verify` goes through here, so a stored
(idempotent) answer and a fresh one are the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from portal.errors import PortalError

REGISTER = "urn:cadmium:profile:register"
# Extension: the confirmation message of email verification.
VERIFY = "urn:cadmium:profile:register:verify"

# errIDs of the spec's table.
ID_EXISTS = "urn:cadmium:profile:register:id_exists"
REG_DISABLED = "urn:cadmium:profile:register:reg_disabled"
RATELIMIT = "urn:cadmium:ratelimit"
BAD_REQUEST = "urn:cadmium:profile:register:bad_request"
WEAK_PASSWORD = "urn:cadmium:profile:register:weak_password"  # noqa: S105 - an error id
# Extensions (docs/api.md): idempotency, outages, verification, loginOnSuccess refusals.
IDEMPOTENCY_MISMATCH = "urn:cadmium:profile:register:idempotency_mismatch"
IN_PROGRESS = "urn:cadmium:profile:register:in_progress"
UNAVAILABLE = "urn:cadmium:profile:register:unavailable"
VERIFICATION_FAILED = "urn:cadmium:profile:register:verification_failed"
VERIFICATION_EXPIRED = "urn:cadmium:profile:register:verification_expired"
# payload.loginError when loginOnSuccess gave no loginPayload, and why.
LOGIN_NOT_ACTIVE = "urn:cadmium:profile:login:not_active"
LOGIN_REPLAYED = "urn:cadmium:profile:login:replayed"
LOGIN_UNAVAILABLE = "urn:cadmium:profile:login:unavailable"

LOGIN_NOT_ACTIVE_TEXT = (
    "The account was created but cannot log in before it is verified or approved: log in "
    "afterwards with the address and password."
)
LOGIN_REPLAYED_TEXT = (
    "This is the stored answer of an earlier identical request, which never holds a session: "
    "log in with the address and password."
)
LOGIN_UNAVAILABLE_TEXT = (
    "The account was created but no session could be opened now: log in with the address "
    "and password."
)

# portal error code -> errID; anything else is bad_request (4xx) or unavailable (5xx).
_ERR_IDS = {
    "id_exists": ID_EXISTS,
    "reg_disabled": REG_DISABLED,
    "rate_limited": RATELIMIT,
    "weak_password": WEAK_PASSWORD,
    "idempotency_mismatch": IDEMPOTENCY_MISMATCH,
    "in_progress": IN_PROGRESS,
    "verification_failed": VERIFICATION_FAILED,
    "verification_expired": VERIFICATION_EXPIRED,
}

# Which request field an input error of create_account is about.
_FIELD_OF_CODE = {
    "invalid_username": "payload.username",
    "invalid_email": "payload.thirdPIDs",
    "invalid_msisdn": "payload.thirdPIDs",
    "invalid_third_pid": "payload.thirdPIDs",
}


@dataclass(frozen=True)
class Answer:
    """An HTTP status and the JSON body of one answer."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def user_id(local_part: str, domain: str) -> str:
    """The EntityID of a user: `@juliet@example.org`."""
    return f"@{local_part}@{domain}"


def envelope(
    *, message_id: str | None, message_type: str, origin: str, ok: bool, payload: dict[str, Any]
) -> dict[str, Any]:
    return {"id": message_id, "type": message_type, "from": origin, "ok": ok, "payload": payload}


def success(
    *,
    message_id: str,
    origin: str,
    payload: dict[str, Any],
    status: int = HTTPStatus.CREATED,
    message_type: str = REGISTER,
) -> Answer:
    body = envelope(
        message_id=message_id, message_type=message_type, origin=origin, ok=True, payload=payload
    )
    return Answer(status=int(status), body=body)


def failure(
    *,
    message_id: str | None,
    origin: str,
    error: PortalError,
    status: int | None = None,
    message_type: str = REGISTER,
) -> Answer:
    """The failure envelope for a portal error: errID, errText and the extras its row needs.

    bad_request carries `fields` (request field -> why); the rate limit carries `retryAfter`
    and the Retry-After header, as does an outage that knows when to come back.
    """
    status = int(status or error.status)
    err_id = _ERR_IDS.get(error.code)
    if err_id is None:
        err_id = UNAVAILABLE if status >= HTTPStatus.INTERNAL_SERVER_ERROR else BAD_REQUEST
    payload: dict[str, Any] = {"errID": err_id, "errText": error.message}
    headers: dict[str, str] = {}
    if err_id == BAD_REQUEST:
        fields = getattr(error, "fields", None) or {
            _FIELD_OF_CODE.get(error.code, "payload"): error.message
        }
        payload["fields"] = dict(fields)
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int):
        headers["Retry-After"] = str(retry_after)
        if err_id == RATELIMIT:
            payload["retryAfter"] = retry_after
    body = envelope(
        message_id=message_id, message_type=message_type, origin=origin, ok=False, payload=payload
    )
    return Answer(status=status, body=body, headers=headers)


def login_error(err_id: str, text: str) -> dict[str, Any]:
    """payload.loginError: why loginOnSuccess gave no loginPayload."""
    return {"loginError": {"errID": err_id, "errText": text}}


def replayable(answer: Answer) -> Answer:
    """The answer as it may be stored for idempotent replay: without any session.

    A loginPayload (session and CSRF tokens) is for the first answer only; the stored copy
    says instead that it is a replay (LOGIN_REPLAYED). Other answers are unchanged.
    """
    payload = answer.body.get("payload")
    if not isinstance(payload, dict) or "loginPayload" not in payload:
        return answer
    stripped = {key: value for key, value in payload.items() if key != "loginPayload"}
    stripped.update(login_error(LOGIN_REPLAYED, LOGIN_REPLAYED_TEXT))
    return Answer(status=answer.status, body={**answer.body, "payload": stripped}, headers={})
