"""In-band registration (specs/inband-registration.md): idempotent account creation by API."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables

from accounts import cpe3
from accounts.models import AccountStatus, CreatedVia, MailAccount, RegistrationRequest
from accounts.services import sessions, verification
from accounts.services.accounts import (
    AddressTaken,
    DatabaseUnavailable,
    check_address_available,
    check_registration_open,
    create_account,
    delete_account,
    hosted_domain,
)
from accounts.services.names import NameRefused
from accounts.services.sessions import ClientInfo
from portal.errors import Conflict, InvalidInput, PortalError
from providers.models import ProviderDomain

logger = logging.getLogger(__name__)

# How long an answer is kept for replay (the spec's 24 h), and after how long a claim that
# never finished (its process died) is taken over by a retry instead of answering 409.
IDEMPOTENCY_RETENTION = timedelta(hours=24)
STALE_CLAIM = timedelta(minutes=5)
_HMAC_SALT = "accounts.services.registration.request"
# Errors of the database connection itself (PostgreSQL or SQLite down, connection lost).
_DB_DOWN = (OperationalError, InterfaceError)


class BadRequest(InvalidInput):
    """The envelope or a field is malformed; `fields` maps each request field to why."""

    code = "bad_request"
    default_message = "The request is not valid; see fields."

    def __init__(self, fields: Mapping[str, str], message: str | None = None) -> None:
        self.fields = dict(fields)
        super().__init__(message)


class IdempotencyMismatch(PortalError):
    code = "idempotency_mismatch"
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    default_message = "This id (or Idempotency-Key) was already used with a different request."


class InProgress(Conflict):
    code = "in_progress"
    default_message = "A request with this id is still being processed; retry in a moment."


@dataclass(frozen=True)
class InbandRegistration:
    """A validated registration request. `origin` is the `from` of every answer."""

    message_id: str
    domain: str
    origin: str
    username: str | None
    third_pids: tuple[tuple[str, str], ...]
    password: str = field(repr=False)
    login_on_success: bool = False
    # Who asked: shown in the account's session list when loginOnSuccess opens one.
    client: ClientInfo = field(default_factory=ClientInfo)
    # The session token the client sent, if any: loginOnSuccess ends it, as Login does.
    held_session: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PurgeResult:
    requests: int
    accounts: int


def request_fingerprint(body: Mapping[str, Any]) -> str:
    """HMAC-SHA256 (key derived from SECRET_KEY) of the request's canonical JSON.

    Keyed, so the stored value is no plain hash of a body holding a password.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return salted_hmac(_HMAC_SALT, canonical, algorithm="sha256").hexdigest()


@sensitive_variables()  # the body holds the password (docs/self-service.md, "Error reports")
def register_inband(
    *, registration: InbandRegistration, idempotency_key: str, request_body: Mapping[str, Any]
) -> cpe3.Answer:
    """Create the account a registration message asks for, at most once per key.

    Inputs: the validated request, its idempotency key (Idempotency-Key header or envelope
    id) and the parsed body (fingerprinted, never stored).
    Returns the answer: 201 created, 202 pending verification, or the first answer again
    (header Idempotent-Replayed) when the key was seen with the same body within 24 h. With
    loginOnSuccess the fresh answer carries a new session (loginPayload); the stored one,
    and so every replay, does not.
    Errors: `idempotency_mismatch` (same key, other body), `in_progress` (same key still
    running), and those of the registration itself: `reg_disabled`, `bad_request`,
    `invalid_username`/`invalid_email`/`invalid_msisdn`, `weak_password`, `id_exists`,
    `mailbox_failed`, `mail_unavailable`, `database_unavailable`. A 4xx answer is stored
    for replay like a success; after a 5xx the key is released so a retry runs again.
    Side effects: one RegistrationRequest row claimed by INSERT (the unique key decides a
    race); the account, its third-party IDs and, when the provider requires it, a
    verification code whose mail is sent after commit (call outside a transaction); with
    loginOnSuccess, an AccountSession.
    """
    fingerprint = request_fingerprint(request_body)
    try:
        replay = _claim(idempotency_key, fingerprint)
    except _DB_DOWN as exc:
        logger.error("registration: database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable() from None
    if replay is not None:
        return replay
    try:
        answer = _register(registration)
    except PortalError as exc:
        if exc.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            _release(idempotency_key)
            raise
        _finish(
            idempotency_key,
            cpe3.failure(message_id=registration.message_id, origin=registration.origin, error=exc),
        )
        raise
    except BaseException:
        _release(idempotency_key)
        raise
    # The stored copy never holds the session of loginOnSuccess (cpe3.replayable).
    _finish(idempotency_key, cpe3.replayable(answer))
    return answer


def _register(registration: InbandRegistration) -> cpe3.Answer:
    try:
        return _create(registration)
    except _DB_DOWN as exc:
        # create_account maps errors inside its transaction; the reads before it land here.
        logger.error("registration: database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable() from None


def _create(registration: InbandRegistration) -> cpe3.Answer:
    domain = hosted_domain(registration.domain)
    check_registration_open(domain, CreatedVia.API, token_ok=False)
    provider = domain.provider
    email = next((value for kind, value in registration.third_pids if kind == "email"), None)
    if provider.require_verified_email and email is None:
        raise BadRequest(
            {"payload.thirdPIDs": "This provider needs an email address to send a code to."}
        )
    local_part = registration.username
    if local_part is None:
        local_part = _local_part_from_email(domain, email)
    payload: dict[str, Any] = {}
    if provider.require_verified_email:
        account = _create_pending(registration, domain, local_part)
        payload["verification"] = "pending"
        status = HTTPStatus.ACCEPTED
    else:
        account = create_account(
            domain=domain,
            local_part=local_part,
            password=registration.password,
            created_via=CreatedVia.API,
            third_pids=registration.third_pids,
        )
        status = HTTPStatus.CREATED
    if registration.username is None:
        # The spec: without a username "the userID is that third-party ID". The mailbox
        # address the client logs in with is then given as `address` (an extension).
        pid = account.third_pids.get(kind="email")
        payload = {"userID": pid.value, "address": account.address, **payload}
    else:
        payload = {"userID": cpe3.user_id(account.local_part, domain.name), **payload}
    if account.status == AccountStatus.APPROVAL:
        payload["approval"] = "pending"
        status = HTTPStatus.ACCEPTED
    if registration.login_on_success:
        payload.update(_login_payload(account, registration.client, held=registration.held_session))
    return cpe3.success(
        message_id=registration.message_id, origin=domain.name, payload=payload, status=status
    )


def _login_payload(account: MailAccount, client: ClientInfo, *, held: str | None) -> dict[str, Any]:
    """loginOnSuccess: a new session like Login's, or loginError saying why there is none.

    The session is a fresh one, and the one the client held before (`held`) ends, as at
    Login (RELIABILITY.md check 15). An account
    that may not log in yet (verification, approval) gets none; neither does one whose
    session cannot be stored now: the account stands and the answer says so.
    """
    if not sessions.can_log_in(account):
        return cpe3.login_error(cpe3.LOGIN_NOT_ACTIVE, cpe3.LOGIN_NOT_ACTIVE_TEXT)
    try:
        new = sessions.open_session(account=account, client=client, replaces=held)
    except _DB_DOWN as exc:
        logger.error("registration: no session opened: %s", type(exc).__name__)
        return cpe3.login_error(cpe3.LOGIN_UNAVAILABLE, cpe3.LOGIN_UNAVAILABLE_TEXT)
    return {
        "loginPayload": {
            "sessionToken": new.token,
            "csrfToken": new.csrf_token,
            "expiresAt": new.expires_at.isoformat(),
        }
    }


def _local_part_from_email(domain: ProviderDomain, email: str | None) -> str:
    """The mailbox name when no username was given: the email's local part, if free."""
    ask = "Send a username: "
    if email is None:
        raise BadRequest(
            {"payload.username": ask + "without one an email third-party ID is needed."}
        )
    local = email.rpartition("@")[0]
    try:
        return check_address_available(domain, local)
    except NameRefused as exc:
        reason = f"the email's local part cannot be used ({exc.message})"
    except AddressTaken:
        reason = "the email's local part is already taken here"
    raise BadRequest({"payload.username": ask + reason})


def _create_pending(
    registration: InbandRegistration, domain: ProviderDomain, local_part: str
) -> MailAccount:
    """A pending account, then its code, which is mailed at once.

    If the code cannot be stored or mailed, the account is deleted again and the error
    raised (`mail_unavailable`), so the client can retry instead of holding a name it can
    never confirm. A crash in between leaves a pending account without a code, which
    purge_registrations removes after the code's lifetime.
    """
    account = create_account(
        domain=domain,
        local_part=local_part,
        password=registration.password,
        created_via=CreatedVia.API,
        third_pids=registration.third_pids,
        status=AccountStatus.PENDING,
    )
    try:
        pid = account.third_pids.get(kind="email")
        code = verification.issue_code(third_pid=pid)
        verification.send_code(account=account, to=pid.value, code=code)
    except BaseException:
        delete_account(account=account)
        raise
    return account


def _claim(key: str, fingerprint: str) -> cpe3.Answer | None:
    """Claim `key` by INSERT: None when this request runs; the stored answer on a replay.

    The unique constraint on `key` decides between concurrent requests: never a
    read-then-write. An expired record (older than the retention) is deleted and the
    insert tried again; a running claim older than STALE_CLAIM is taken over.
    """
    for _attempt in range(3):
        try:
            with transaction.atomic():
                RegistrationRequest.objects.create(key=key, request_hash=fingerprint)
            return None
        except IntegrityError:
            pass
        existing = RegistrationRequest.objects.filter(key=key).first()
        if existing is None:
            continue  # released in between: claim again
        now = timezone.now()
        if existing.created_at <= now - IDEMPOTENCY_RETENTION:
            RegistrationRequest.objects.filter(
                pk=existing.pk, created_at=existing.created_at
            ).delete()
            continue
        if existing.request_hash != fingerprint:
            raise IdempotencyMismatch()
        if existing.state == RegistrationRequest.State.RUNNING:
            if existing.created_at <= now - STALE_CLAIM and (
                RegistrationRequest.objects.filter(
                    pk=existing.pk,
                    state=RegistrationRequest.State.RUNNING,
                    created_at=existing.created_at,
                ).update(created_at=now)
            ):
                return None
            raise InProgress()
        return cpe3.Answer(
            status=existing.status_code or HTTPStatus.OK,
            body=existing.response or {},
            headers={"Idempotent-Replayed": "true"},
        )
    raise InProgress()


def _finish(key: str, answer: cpe3.Answer) -> None:
    """Store the answer for replay. Failing here loses no account: the answer still goes out."""
    try:
        RegistrationRequest.objects.filter(key=key).update(
            state=RegistrationRequest.State.DONE, status_code=answer.status, response=answer.body
        )
    except _DB_DOWN as exc:
        logger.error("registration %r: answer not stored: %s", key, type(exc).__name__)


def _release(key: str) -> None:
    """Forget the claim so that a retry runs again (after a 5xx or an unexpected error)."""
    try:
        RegistrationRequest.objects.filter(
            key=key, state=RegistrationRequest.State.RUNNING
        ).delete()
    except _DB_DOWN as exc:
        logger.error("registration %r: claim not released: %s", key, type(exc).__name__)


def purge_registrations(*, now: datetime | None = None) -> PurgeResult:
    """Delete idempotency records past the 24 h retention and abandoned pending accounts.

    Returns how many of each were deleted. Run hourly (CELERY_BEAT_SCHEDULE) or by
    `manage.py purge_registrations`.
    """
    now = now or timezone.now()
    requests, _ = RegistrationRequest.objects.filter(
        created_at__lte=now - IDEMPOTENCY_RETENTION
    ).delete()
    accounts = verification.purge_abandoned(now=now)
    return PurgeResult(requests=requests, accounts=accounts)
