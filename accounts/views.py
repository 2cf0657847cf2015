"""Self-service pages under /account/: log in, overview, full name, password, sessions, log out.

Server-rendered and without JavaScript. They use the sessions of the account API (the same
cookie) and its CSRF design: the login form carries the login token that is also in a
cookie scoped to /account/login, and every other form carries the session's CSRF value in
the field `csrf`. Django's own CSRF middleware is bypassed for these views (`csrf_exempt`)
because this CSRF value is tied to the account session, which Django's is not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import web
from accounts.forms import FullNameForm, LoginForm, PasswordForm
from accounts.models import AccountSession
from accounts.services import accounts, sessions
from accounts.services.accounts import WrongPassword
from accounts.services.sessions import BadAuth, BadLogin, CSRFRefused, NoAuth
from portal import ratelimit
from portal.errors import PortalError
from portal.pages import strict_page

CSRF_FIELD = "csrf"
LOGIN_TOKEN_FIELD = "login_token"  # noqa: S105 - a form field's name
# ?done=<key> after a change (post/redirect/get): the notice shown on the next page.
_NOTICES = {
    "full-name": _("Your full name was saved."),
    "password": _("Your password was changed. Your other sessions and mail apps were logged out."),
    "revoked": _("The session was ended."),
    "logout": _("You are logged out."),
}

SessionView = Callable[..., HttpResponse]
# Form fields that error reports show only as stars (sensitive_post_parameters).
_SECRET_FIELDS = (CSRF_FIELD, LOGIN_TOKEN_FIELD, *PasswordForm.base_fields, *LoginForm.base_fields)


def _page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Our own CSRF instead of Django's; the portal's strict page CSP and no-store; the
    passwords, tokens and CSRF values of the forms out of error reports; a database that
    fails answers 503."""

    @functools.wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except web.DATABASE_DOWN as exc:  # 503 with the way back, never a 500
            return _refusal(request, web.database_down(exc))

    page = csrf_exempt(strict_page(guarded))
    return sensitive_post_parameters(*_SECRET_FIELDS)(page)  # type: ignore[return-value]


def _refusal(request: HttpRequest, error: PortalError) -> HttpResponse:
    """A page saying why a form was refused, with the way back (log in, or reload)."""
    response = render(
        request,
        "accounts/self_service/refused.html",
        {"error": error, "must_log_in": isinstance(error, NoAuth | BadAuth)},
        status=int(error.status),
    )
    if isinstance(error, NoAuth | BadAuth):
        web.clear_session_cookie(response)
    if getattr(error, "retry_after", None):
        response["Retry-After"] = str(error.retry_after)  # type: ignore[attr-defined]
    return response


def session_action(view: SessionView) -> Callable[..., HttpResponse]:
    """A form post of a logged-in owner: Origin, then session, then the CSRF field.

    The view is called as view(request, session, ...) only when all three pass; otherwise
    nothing is changed and the refusal page answers (401 no or ended session, 403 CSRF).
    """

    @_page
    @require_POST
    @functools.wraps(view)
    @sensitive_variables("token")
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            web.check_origin(request)
            token = web.session_token(request)
            session = sessions.authenticate(token=token)
            sessions.check_csrf(token=token, csrf_token=request.POST.get(CSRF_FIELD))
        except (NoAuth, BadAuth, CSRFRefused) as exc:
            return _refusal(request, exc)
        return view(request, session, *args, **kwargs)

    return wrapper


def _see_other(url: str) -> HttpResponseRedirect:
    response = HttpResponseRedirect(url)
    response.status_code = HTTPStatus.SEE_OTHER
    return response


def _done(key: str) -> HttpResponseRedirect:
    """After a change: the overview again, with the notice of `key`."""
    return _see_other(f"{reverse('self-service')}?{urlencode({'done': key})}")


def _logged_out() -> HttpResponseRedirect:
    """After the session ended: the login page saying so, and the cookie cleared."""
    response = _see_other(f"{reverse('self-service-login')}?{urlencode({'done': 'logout'})}")
    web.clear_session_cookie(response)
    return response


# ----- log in / log out ---------------------------------------------------------------------


@_page
@require_http_methods(["GET", "POST"])
@sensitive_variables()  # the password: out of error reports (this frame and below)
def login_page(request: HttpRequest) -> HttpResponse:
    """The login form; its login token is in a hidden field and in a cookie for this path."""
    if request.method == "GET":
        try:
            sessions.authenticate(token=web.session_token(request))
        except (NoAuth, BadAuth):
            return _login_form(request, LoginForm())
        return HttpResponseRedirect(reverse("self-service"))
    form = LoginForm(request.POST)
    try:
        web.check_origin(request)
        sessions.consume_login_token(
            token=request.POST.get(LOGIN_TOKEN_FIELD), cookie=web.login_cookie(request)
        )
        if not form.is_valid():
            return _login_form(request, form, status=HTTPStatus.BAD_REQUEST)
        with ratelimit.credential_attempt(
            request,
            name=sessions.normalise_login_name(form.cleaned_data["username"]),
            failure=BadLogin,
        ):
            new = sessions.log_in(
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password"],
                client=web.client_info(request),
                replaces=web.session_token(request),
            )
    except PortalError as exc:
        return _login_form(request, LoginForm(initial=_typed_name(form)), error=exc)
    response = _see_other(reverse("self-service"))
    web.set_session_cookie(response, new.token)
    web.clear_login_cookie(response, path=reverse("self-service-login"))
    return response


def _typed_name(form: LoginForm) -> dict[str, str]:
    """Keep the typed address (never the password) when the form is shown again."""
    return {"username": str(form.data.get("username", ""))[:320]}


@sensitive_variables("token")
def _login_form(
    request: HttpRequest,
    form: LoginForm,
    *,
    status: int = HTTPStatus.OK,
    error: PortalError | None = None,
) -> HttpResponse:
    """The login page with a fresh login token (a used or refused one is gone)."""
    token = None
    try:
        ratelimit.enforce(request, ratelimit.LOGIN_PREP)
        token = sessions.issue_login_token()
    except PortalError as exc:
        error = error or exc
    if error is not None:
        status = int(error.status)
    response = render(
        request,
        "accounts/self_service/login.html",
        {
            "form": form,
            "login_token": token,
            "error": error,
            "notice": _NOTICES.get(request.GET.get("done", "")),
        },
        status=status,
    )
    if error is not None and getattr(error, "retry_after", None):
        response["Retry-After"] = str(error.retry_after)  # type: ignore[attr-defined]
    if token is not None:
        web.set_login_cookie(response, token, path=reverse("self-service-login"))
    return response


@session_action
def logout_page(request: HttpRequest, session: AccountSession) -> HttpResponse:
    sessions.log_out(session=session)
    return _logged_out()


# ----- the overview and its forms -----------------------------------------------------------


@_page
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """Address, storage, full name, password, sessions, set-up links; or off to log in."""
    try:
        session = sessions.authenticate(token=web.session_token(request))
    except (NoAuth, BadAuth):
        response = HttpResponseRedirect(reverse("self-service-login"))
        web.clear_session_cookie(response)
        return response
    return _overview(request, session)


@sensitive_variables("token")
def _overview(
    request: HttpRequest,
    session: AccountSession,
    *,
    full_name_form: FullNameForm | None = None,
    password_form: PasswordForm | None = None,
    error: PortalError | None = None,
) -> HttpResponse:
    account = session.account
    summary = accounts.account_summary(account=account)
    token = web.session_token(request) or ""  # authenticated: the cookie is there
    query = urlencode({"emailaddress": account.address})
    used, limit = summary.storage_used, summary.storage_limit
    context = {
        "account": account,
        "summary": summary,
        "percent": round(100 * used / limit) if used is not None and limit else None,
        "meter_high": limit * 9 // 10,  # the bar turns to a warning past 90 %
        "csrf": sessions.csrf_token_for(token),
        "full_name_form": full_name_form or FullNameForm(initial={"full_name": account.full_name}),
        "password_form": password_form or PasswordForm(),
        "sessions": AccountSession.objects.active_for(account),
        "current_session": session,
        "autoconfig_url": f"{reverse('autoconfig')}?{query}",
        "mobileconfig_url": f"{reverse('mobileconfig')}?{query}",
        "error": error,
        "notice": _NOTICES.get(request.GET.get("done", "")),
    }
    status = HTTPStatus.OK
    if error is not None:
        status = error.status
    elif (full_name_form and full_name_form.errors) or (password_form and password_form.errors):
        status = HTTPStatus.BAD_REQUEST
    response = render(request, "accounts/self_service/overview.html", context, status=status)
    if error is not None and getattr(error, "retry_after", None):
        response["Retry-After"] = str(error.retry_after)  # type: ignore[attr-defined]
    return response


@session_action
def save_full_name(request: HttpRequest, session: AccountSession) -> HttpResponse:
    form = FullNameForm(request.POST)
    if not form.is_valid():
        return _overview(request, session, full_name_form=form)
    try:
        accounts.change_full_name(account=session.account, full_name=form.cleaned_data["full_name"])
    except PortalError as exc:
        form.add_error("full_name", exc.message)
        return _overview(request, session, full_name_form=form)
    return _done("full-name")


@session_action
@sensitive_variables()  # the passwords: out of error reports (this frame and below)
def change_password(request: HttpRequest, session: AccountSession) -> HttpResponse:
    form = PasswordForm(request.POST)
    if not form.is_valid():
        return _overview(request, session, password_form=form)
    try:
        # A wrong current password counts like a failed login (RELIABILITY.md check 13).
        with ratelimit.credential_attempt(
            request, name=session.account.address, failure=WrongPassword, forgive_address=False
        ):
            accounts.change_password(
                account=session.account,
                current_password=form.cleaned_data["current_password"],
                password=form.cleaned_data["password"],
                session=session,
            )
    except WrongPassword as exc:
        form.add_error("current_password", exc.message)
        return _overview(request, session, password_form=form)
    except (NoAuth, BadAuth) as exc:  # ended meanwhile (another password change, a revoke)
        return _refusal(request, exc)
    except PortalError as exc:
        if exc.status >= HTTPStatus.TOO_MANY_REQUESTS:
            return _overview(request, session, password_form=PasswordForm(), error=exc)
        form.add_error("password", exc.message)
        return _overview(request, session, password_form=form)
    return _done("password")


@session_action
def revoke_session(request: HttpRequest, session: AccountSession, session_id: int) -> HttpResponse:
    try:
        sessions.revoke_session(account=session.account, session_id=session_id)
    except PortalError as exc:
        return _overview(request, session, error=exc)
    if session_id == session.pk:
        return _logged_out()
    return _done("revoked")
