"""DRF endpoints of account self-service under /api/v1/account (specs/account-api.md).

Every call but LoginPrep and Login needs the session cookie and the session's CSRF value in
`X-CSRF-Token`. Before any of that: a foreign `Origin` is refused (403 `user:csrf`) and a
body in anything but `application/json` is refused (415). Errors are `{"code", "message"}`
with the `user:*` codes of the spec (`account_error`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from django.urls import reverse
from django.views.decorators.debug import sensitive_variables
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import web
from accounts.api import BoundedJSONParser, flatten_errors
from accounts.models import AccountSession
from accounts.serializers import (
    AccountErrorOut,
    AccountOut,
    FullNameIn,
    LoginIn,
    LoginOut,
    LoginPrepOut,
    SessionOut,
    SetPasswordIn,
)
from accounts.services import accounts, sessions
from accounts.services.accounts import WrongPassword
from accounts.services.sessions import BadLogin
from portal import ratelimit
from portal.errors import PortalError

logger = logging.getLogger(__name__)

_CSRF_PARAMETER = OpenApiParameter(
    web.CSRF_HEADER,
    location=OpenApiParameter.HEADER,
    required=True,
    description="The csrfToken Login answered (the session's CSRF value).",
)
_ERRORS = {
    HTTPStatus.BAD_REQUEST: AccountErrorOut,
    HTTPStatus.UNAUTHORIZED: AccountErrorOut,
    HTTPStatus.FORBIDDEN: AccountErrorOut,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: AccountErrorOut,
    HTTPStatus.TOO_MANY_REQUESTS: AccountErrorOut,
    HTTPStatus.SERVICE_UNAVAILABLE: AccountErrorOut,
}
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def account_error(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every refusal as `{"code", "message"}` with the spec's `user:*` codes.

    `user:*` errors of the sessions service pass as they are; the rate limit becomes
    `user:rateLimited`; any other 4xx (validation, weak password, wrong current password,
    unknown session) `user:error` with its status; a 5xx `server:error` with its status
    (a database that fails too: 503, never a 500).
    """
    headers: dict[str, str] = {}
    if isinstance(exc, web.DATABASE_DOWN):
        exc = web.database_down(exc)
    if isinstance(exc, PortalError):
        status, message = int(exc.status), exc.message
        if exc.code.startswith("user:"):
            code = exc.code
        elif isinstance(exc, ratelimit.RateLimited):
            code = "user:rateLimited"
        elif status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            code = "server:error"
        else:
            code = "user:error"
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            headers["Retry-After"] = str(retry_after)
        body: dict[str, Any] = {"code": code, "message": message}
    elif isinstance(exc, exceptions.ValidationError):
        status = HTTPStatus.BAD_REQUEST
        body = {
            "code": "user:error",
            "message": "Some of the input is not valid.",
            "fields": flatten_errors(exc.detail),
        }
    elif isinstance(exc, exceptions.APIException):
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else "Request refused."
        body = {"code": "user:error", "message": str(detail)}
    else:
        return None  # a bug: Django's 500 handling and logging take over
    response = Response(body, status=status, headers=headers)
    if body["code"] in {sessions.NoAuth.code, sessions.BadAuth.code}:
        web.clear_session_cookie(response)  # nothing to keep: let the client start over
    return response


class AccountAPIView(APIView):
    """Shared checks of the account endpoints (see the module docstring), in this order."""

    parser_classes = [BoundedJSONParser]
    # False only for LoginPrep and Login.
    needs_session = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session: AccountSession | None = None

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return account_error

    @sensitive_variables("token")
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        web.check_origin(request)
        if request.method in _BODY_METHODS:
            content_type = request.content_type.split(";", 1)[0].strip().lower()
            if content_type and content_type != "application/json":
                raise exceptions.UnsupportedMediaType(
                    content_type, detail="Send application/json (or no body)."
                )
        if self.needs_session:
            token = web.session_token(request)
            self.session = sessions.authenticate(token=token)
            sessions.check_csrf(token=token, csrf_token=request.headers.get(web.CSRF_HEADER))

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        web.private_headers(response, csp=web.API_CSP)
        return response

    @property
    def current(self) -> AccountSession:
        if self.session is None:  # a view with needs_session off asked: a bug, refuse
            raise sessions.NoAuth()
        return self.session

    def validated(self, request: Request, serializer_class: type[Any]) -> dict[str, Any]:
        serializer = serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        return data


class LoginPrepView(AccountAPIView):
    """LoginPrep: a login token, as a value and as a cookie; Login needs both."""

    needs_session = False

    @extend_schema(operation_id="account_login_prep", request=None, responses={200: LoginPrepOut})
    @sensitive_variables("token")
    def post(self, request: Request) -> Response:
        ratelimit.enforce(request, ratelimit.LOGIN_PREP)
        token = sessions.issue_login_token()
        response = Response({"loginToken": token})
        web.set_login_cookie(response, token, path=reverse("account-login"))
        return response


class LoginView(AccountAPIView):
    """Login: a session (cookie) and its CSRF value for the login token and credentials."""

    needs_session = False

    @extend_schema(
        operation_id="account_login", request=LoginIn, responses={200: LoginOut, **_ERRORS}
    )
    @sensitive_variables()  # the password: out of error reports (this frame and below)
    def post(self, request: Request) -> Response:
        data = self.validated(request, LoginIn)
        sessions.consume_login_token(token=data["loginToken"], cookie=web.login_cookie(request))
        with ratelimit.credential_attempt(
            request, name=sessions.normalise_login_name(data["username"]), failure=BadLogin
        ):
            new = sessions.log_in(
                username=data["username"],
                password=data["password"],
                client=web.client_info(request),
                replaces=web.session_token(request),
            )
        response = Response({"csrfToken": new.csrf_token})
        web.set_session_cookie(response, new.token)
        web.clear_login_cookie(response, path=reverse("account-login"))
        return response


class LogoutView(AccountAPIView):
    """Logout: the session ends; its cookie is cleared."""

    @extend_schema(
        operation_id="account_logout",
        request=None,
        responses={204: None, **_ERRORS},
        parameters=[_CSRF_PARAMETER],
    )
    def post(self, request: Request) -> Response:
        sessions.log_out(session=self.current)
        response = Response(status=HTTPStatus.NO_CONTENT)
        web.clear_session_cookie(response)
        return response


class PasswordView(AccountAPIView):
    """SetPassword: the current password, then the new one; every other session ends."""

    @extend_schema(
        operation_id="account_set_password",
        request=SetPasswordIn,
        responses={204: None, **_ERRORS},
        parameters=[_CSRF_PARAMETER],
    )
    @sensitive_variables()  # both passwords: out of error reports (this frame and below)
    def post(self, request: Request) -> Response:
        data = self.validated(request, SetPasswordIn)
        account = self.current.account
        # A wrong current password counts like a failed login (RELIABILITY.md check 13).
        with ratelimit.credential_attempt(
            request, name=account.address, failure=WrongPassword, forgive_address=False
        ):
            accounts.change_password(
                account=account,
                current_password=data["currentPassword"],
                password=data["password"],
                session=self.current,
            )
        return Response(status=HTTPStatus.NO_CONTENT)


class AccountView(AccountAPIView):
    """Account: address, full name, provider, storage used and limit, created, third-party IDs."""

    @extend_schema(
        operation_id="account", responses={200: AccountOut, **_ERRORS}, parameters=[_CSRF_PARAMETER]
    )
    def get(self, request: Request) -> Response:
        summary = accounts.account_summary(account=self.current.account)
        account = summary.account
        return Response(
            {
                "address": account.address,
                "fullName": account.full_name,
                "provider": account.provider.name,
                "storageUsed": summary.storage_used,
                "storageLimit": summary.storage_limit,
                "created": account.created_at.isoformat(),
                "thirdPIDs": [
                    {"type": pid.kind, "value": pid.value, "verified": pid.verified_at is not None}
                    for pid in summary.third_pids
                ],
            }
        )


class FullNameView(AccountAPIView):
    """AccountSaveFullName."""

    @extend_schema(
        operation_id="account_save_full_name",
        request=FullNameIn,
        responses={204: None, **_ERRORS},
        parameters=[_CSRF_PARAMETER],
    )
    def post(self, request: Request) -> Response:
        data = self.validated(request, FullNameIn)
        accounts.change_full_name(account=self.current.account, full_name=data["fullName"])
        return Response(status=HTTPStatus.NO_CONTENT)


def session_out(session: AccountSession, current: AccountSession) -> dict[str, Any]:
    return {
        "id": session.pk,
        "created": session.created_at.isoformat(),
        "lastUsed": session.last_used_at.isoformat(),
        "expires": session.expires_at.isoformat(),
        "userAgent": session.user_agent,
        "ip": session.ip,
        "current": session.pk == current.pk,
    }


class SessionsView(AccountAPIView):
    """The account's open sessions, most recently used first."""

    @extend_schema(
        operation_id="account_sessions",
        responses={200: SessionOut(many=True), **_ERRORS},
        parameters=[_CSRF_PARAMETER],
    )
    def get(self, request: Request) -> Response:
        listed = AccountSession.objects.active_for(self.current.account)
        return Response([session_out(session, self.current) for session in listed])


class SessionView(AccountAPIView):
    """Revoke one of the account's sessions (this one too: then it is a logout)."""

    @extend_schema(
        operation_id="account_revoke_session",
        request=None,
        responses={204: None, 404: AccountErrorOut, **_ERRORS},
        parameters=[_CSRF_PARAMETER],
    )
    def delete(self, request: Request, session_id: int) -> Response:
        sessions.revoke_session(account=self.current.account, session_id=session_id)
        response = Response(status=HTTPStatus.NO_CONTENT)
        if session_id == self.current.pk:
            web.clear_session_cookie(response)
        return response
