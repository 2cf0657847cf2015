"""Self-service sessions (specs/account-api.md): login tokens, log in and out, end, revoke.

The design is mox's account API: LoginPrep hands out a single-use login token (as a value
and as a cookie; Login needs both, which closes login CSRF), Login creates a server-side
session behind a random token, and a CSRF value derived from that token must accompany
every call. Only the SHA-256 of a session token is stored (AccountSession.token_hash); the
CSRF value is an HMAC of the token under SECRET_KEY, so it needs no storage either.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from accounts import passwords
from accounts.models import AccountSession, AccountStatus, MailAccount, MailboxState
from accounts.services.names import normalise_local_part
from portal.audit import security_event
from portal.errors import NotFound, PortalError, ServiceUnavailable
from providers.domains import DomainError, to_ascii

logger = logging.getLogger(__name__)

# 256 bits from `secrets` for session and login tokens (RELIABILITY.md check 9).
TOKEN_BYTES = 32
# A session's expiry moves forward on use; to spare a write per request it is moved only
# when the last move is at least this old (so the idle limit is kept to within a minute).
TOUCH_SECONDS = 60
USER_AGENT_LENGTH = 300
_CSRF_SALT = "accounts.services.sessions.csrf"
_LOGIN_TOKEN_PREFIX = "accounts.login-token:"  # noqa: S105 - a cache key prefix
# Names of the variables holding a session token, CSRF value or login token: error reports
# show them only as stars (sensitive_variables; docs/self-service.md, "Error reports").
_SECRETS = ("token", "csrf_token", "cookie", "replaces", "typed", "expected")


class _Translated(PortalError):
    """Its default message in the language of the request (gettext at raise time)."""

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message or gettext(self.default_message), code=code)


class NoAuth(_Translated):
    """No session token came with the request."""

    code = "user:noAuth"
    status = HTTPStatus.UNAUTHORIZED
    default_message = gettext_noop("Log in first.")


class BadAuth(_Translated):
    """The session token is unknown, expired or revoked, or its account may not log in."""

    code = "user:badAuth"
    status = HTTPStatus.UNAUTHORIZED
    default_message = gettext_noop("Your session has ended; log in again.")


class BadLogin(_Translated):
    """Wrong credentials; one answer for an unknown user and a wrong password."""

    code = "user:badLogin"
    status = HTTPStatus.UNAUTHORIZED
    default_message = gettext_noop("Wrong address or password.")


class CSRFRefused(_Translated):
    """The CSRF value (or, at login, the login token) is missing or wrong: nothing changed."""

    code = "user:csrf"
    status = HTTPStatus.FORBIDDEN
    default_message = gettext_noop(
        "The request lacks a valid CSRF value; reload the page and try again."
    )


class LoginTokensUnavailable(_Translated, ServiceUnavailable):
    code = "login_unavailable"
    default_message = gettext_noop("Login is not available right now; try again shortly.")
    retry_after = 30


@dataclass(frozen=True)
class ClientInfo:
    """Who is logging in, as shown in the session list."""

    ip: str | None = None
    user_agent: str = ""


@dataclass(frozen=True)
class NewSession:
    """A session just created: the row and the secrets its holder gets, once."""

    session: AccountSession
    token: str = field(repr=False)
    csrf_token: str = field(repr=False)

    @property
    def expires_at(self) -> datetime:
        return self.session.expires_at


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@sensitive_variables(*_SECRETS)
def csrf_token_for(token: str) -> str:
    """The CSRF value of the session behind `token` (an HMAC under SECRET_KEY)."""
    return salted_hmac(_CSRF_SALT, token, algorithm="sha256").hexdigest()


@sensitive_variables(*_SECRETS)
def _same(typed: str, expected: str) -> bool:
    """Constant-time equality of two strings, whatever characters the client sent.

    hmac.compare_digest refuses str with non-ASCII characters (TypeError, a 500), and a
    header, cookie or form field can carry any: compare their UTF-8 bytes instead.
    """
    return hmac.compare_digest(
        typed.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


@sensitive_variables(*_SECRETS)
def check_csrf(*, token: str | None, csrf_token: str | None) -> None:
    """CSRFRefused unless `csrf_token` is the CSRF value of the session behind `token`."""
    if not token or not csrf_token:
        raise CSRFRefused()
    if not _same(csrf_token, csrf_token_for(token)):
        raise CSRFRefused()


# ----- LoginPrep ----------------------------------------------------------------------------


@sensitive_variables(*_SECRETS)
def issue_login_token() -> str:
    """A new single-use login token, valid for LOGIN_TOKEN_SECONDS (LoginPrep).

    Kept in the shared cache (only its hash), so any web process can take it back once.
    Errors: `login_unavailable` (503) when the cache cannot store it.
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        caches["default"].set(
            _LOGIN_TOKEN_PREFIX + token_hash(token), 1, settings.LOGIN_TOKEN_SECONDS
        )
    except Exception as exc:  # the backend's own errors (redis.RedisError, OSError, ...)
        logger.warning("login token not stored: cache unavailable: %s", type(exc).__name__)
        raise LoginTokensUnavailable() from None
    return token


@sensitive_variables(*_SECRETS)
def consume_login_token(*, token: str | None, cookie: str | None) -> None:
    """Use up a login token; CSRFRefused unless value and cookie agree and it is unused.

    Called before anything about the credentials is looked at. The cache's delete is
    atomic (Redis DEL answers whether it removed the key), so of two logins with one token
    only one gets through.
    Errors: `user:csrf`, `login_unavailable`.
    """
    if not token or not cookie or not _same(token, cookie):
        raise CSRFRefused(
            gettext("The login token is missing or does not match; load the login again.")
        )
    key = _LOGIN_TOKEN_PREFIX + token_hash(token)
    try:
        # get() honours the expiry on every backend (the local-memory cache's delete() does
        # not); delete() then claims the token, once.
        cache = caches["default"]
        deleted = cache.get(key) is not None and cache.delete(key)
    except Exception as exc:
        logger.warning("login token not checked: cache unavailable: %s", type(exc).__name__)
        raise LoginTokensUnavailable() from None
    if not deleted:
        raise CSRFRefused(
            gettext("The login token was used already or has expired; load the login again.")
        )


# ----- Login, sessions ------------------------------------------------------------------------


def normalise_login_name(username: str) -> str:
    """The address typed at login as accounts store it: the local part NFKC-folded and
    lower-case (accounts.services.names), the domain in A-labels. A name that cannot be an
    address comes back lower-cased; login_address() then finds no account for it."""
    local, at, domain = username.strip().rpartition("@")
    if not at or not local or not domain:
        return username.strip().lower()
    try:
        domain = to_ascii(domain)
    except DomainError:
        return username.strip().lower()
    return f"{normalise_local_part(local)}@{domain}"


def login_address(username: str) -> str | None:
    """The normalised address of a typed login name, or None if it cannot be one (no @,
    a domain that is no domain name): such a name is looked up nowhere."""
    local, at, domain = username.strip().rpartition("@")
    if not at or not local or not domain:
        return None
    try:
        to_ascii(domain)
    except DomainError:
        return None
    return normalise_login_name(username)


def can_log_in(account: MailAccount) -> bool:
    """Only active accounts whose mailbox is ready may log in (web, IMAP and SMTP alike)."""
    return account.status == AccountStatus.ACTIVE and account.mailbox_state == MailboxState.READY


_NOT_ACTIVE = {
    AccountStatus.APPROVAL: _(
        "This account is awaiting an administrator's approval. It cannot log in now."
    ),
    AccountStatus.PENDING: _(
        "This account's email address is not verified yet. It cannot log in now."
    ),
    AccountStatus.DISABLED: _("This account is disabled. It cannot log in now."),
}


@sensitive_variables()  # the password (docs/self-service.md, "Error reports")
def log_in(
    *, username: str, password: str, client: ClientInfo, replaces: str | None = None
) -> NewSession:
    """Check the credentials and open a new session.

    The password hasher runs exactly once whatever the outcome: an unknown name is checked
    against a dummy hash, so it costs what a wrong password costs and answers the same.
    `replaces` is the session token the client held before (if any): that session ends
    (open_session). Errors: `user:badLogin` (unknown name, wrong
    password; with the right password, an account that may not log in says why).
    Side effects: one AccountSession row. Rate limits are the caller's
    (portal.ratelimit.credential_attempt around this call).
    """
    address = login_address(username)
    try:
        account = (
            MailAccount.objects.with_address(address).select_related("domain__provider").first()
            if address is not None
            else None
        )
    except ValidationError:  # no domain can be named so (a line break in it): unknown
        account = None
    if address is None or account is None:
        address = address or normalise_login_name(username)
        passwords.verify_password(password, passwords.dummy_hash())
        raise _refused(address, client, "unknown")
    if not passwords.verify_password(password, account.password):
        raise _refused(address, client, "wrong password")
    if not can_log_in(account):
        reason = _NOT_ACTIVE.get(
            AccountStatus(account.status), _("This account is being set up. It cannot log in now.")
        )
        raise _refused(address, client, account.status, str(reason))
    new = open_session(account=account, client=client, replaces=replaces)
    security_event("login", outcome="success", actor=account.address, ip=client.ip)
    return new


def _refused(address: str, client: ClientInfo, why: str, message: str | None = None) -> BadLogin:
    """BadLogin, logged as one security event for the operator (fail2ban and the like):
    never the password; the typed name JSON-escaped, so a line break cannot forge a line."""
    security_event("login", outcome="failure", actor=address, ip=client.ip, reason=why)
    return BadLogin(message)


@sensitive_variables(*_SECRETS)
def open_session(
    *, account: MailAccount, client: ClientInfo, replaces: str | None = None
) -> NewSession:
    """A new session for an account that has just proven itself (login, registration).

    `replaces` is the session token the client held before, if any: that session ends in
    the same transaction, so no session id survives a login (fixation, check 15).
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = timezone.now()
    with transaction.atomic():
        if replaces:
            AccountSession.objects.filter(token_hash=token_hash(replaces)).delete()
        session = AccountSession.objects.create(
            account=account,
            token_hash=token_hash(token),
            created_at=now,
            last_used_at=now,
            expires_at=_expiry(created_at=now, used_at=now),
            user_agent=printable(client.user_agent)[:USER_AGENT_LENGTH],
            ip=client.ip or None,
        )
    return NewSession(session=session, token=token, csrf_token=csrf_token_for(token))


def printable(text: str) -> str:
    """`text` without control and other unprintable characters: a header as shown in the
    session list (PostgreSQL cannot store NUL, which some servers let through)."""
    return "".join(char for char in text if char.isprintable())


def _expiry(*, created_at: datetime, used_at: datetime) -> datetime:
    return min(
        used_at + timedelta(seconds=settings.ACCOUNT_SESSION_IDLE_SECONDS),
        created_at + timedelta(seconds=settings.ACCOUNT_SESSION_MAX_SECONDS),
    )


@sensitive_variables(*_SECRETS)
def authenticate(*, token: str | None) -> AccountSession:
    """The live session behind a session token, its expiry moved forward by this use.

    Errors: `user:noAuth` (no token), `user:badAuth` (unknown, expired or revoked token, or
    an account that may no longer log in: its sessions are deleted on the spot).
    """
    if not token:
        raise NoAuth()
    session = (
        AccountSession.objects.select_related("account__domain__provider")
        .filter(token_hash=token_hash(token))
        .first()
    )
    if session is None:
        raise BadAuth()
    now = timezone.now()
    if not session.is_valid(at=now):
        AccountSession.objects.filter(pk=session.pk).delete()
        raise BadAuth()
    if not can_log_in(session.account):
        end_other_sessions(account=session.account, keep=None)
        raise BadAuth()
    if now - session.last_used_at >= timedelta(seconds=TOUCH_SECONDS):
        expires_at = _expiry(created_at=session.created_at, used_at=now)
        # An UPDATE that counts: a logout, revoke or password change elsewhere may have
        # deleted the row since it was read (save() would raise, a 500).
        if not AccountSession.objects.filter(pk=session.pk).update(
            last_used_at=now, expires_at=expires_at
        ):
            raise BadAuth()
        session.last_used_at, session.expires_at = now, expires_at
    return session


def log_out(*, session: AccountSession) -> None:
    """End this session: its row is deleted, so its token no longer opens anything."""
    AccountSession.objects.filter(pk=session.pk).delete()


def end_other_sessions(*, account: MailAccount, keep: AccountSession | None) -> int:
    """End every session of `account` but `keep` (None: all of them); how many ended."""
    sessions = AccountSession.objects.filter(account_id=account.pk)
    if keep is not None:
        sessions = sessions.exclude(pk=keep.pk)
    ended, _ = sessions.delete()
    if ended:
        logger.info("%d self-service session(s) of %s ended", ended, account.address)
    return ended


def revoke_session(*, account: MailAccount, session_id: int) -> None:
    """End one of the account's own sessions. Errors: `not_found` (none of its sessions)."""
    ended, _ = AccountSession.objects.filter(pk=session_id, account_id=account.pk).delete()
    if not ended:
        raise NotFound(gettext("No such session of this account."))


def purge_sessions(*, now: datetime | None = None) -> int:
    """Delete expired session rows (they open nothing already); how many."""
    deleted, _ = AccountSession.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted
