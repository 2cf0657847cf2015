"""The hosted registration pages (/register/<slug>/): server-rendered steps that end in the
account provisioner's text/xml answer (specs/provisioner.md, specs/autoconfig.md).

Step by step: GET the entry page (token, address or "closed"), POST `token`, POST
`address`, POST `password` (answers the clientConfig with the new credentials), POST `exit`
(USER_CANCEL / USER_BACK). Each step is a plain form post, so nothing depends on
JavaScript; the state between steps is signed (providers.services.registration).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import patch_cache_control
from django.utils.translation import gettext
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_POST

from accounts.services.accounts import AddressTaken, DatabaseUnavailable, WeakPassword
from accounts.services.names import NameRefused
from portal import ratelimit
from portal.errors import PortalError
from portal.pages import strict_page
from providers import branding
from providers.forms import AddressForm, ExitForm, PasswordForm, TokenForm
from providers.models import CancelAnswer, Provider, Registration
from providers.services import registration
from providers.services.registration import Flow, FlowExpired, FlowInvalid

logger = logging.getLogger(__name__)

XML = "text/xml; charset=utf-8"
_TEMPLATES = "providers/registration/"
# Refusals of the names (providers.services.suggest.check_name_query), shown at the names.
_NAME_CODES = ("name_missing", "name_too_long", "invalid_name")
# The database unreachable, raw or as the account services report it.
_DB_DOWN = (OperationalError, InterfaceError, DatabaseUnavailable)


# ----- answers --------------------------------------------------------------------------------


def _page(
    request: HttpRequest,
    provider: Provider,
    template: str,
    context: dict[str, Any] | None = None,
    status: int = HTTPStatus.OK,
) -> TemplateResponse:
    base = {
        "provider": provider,
        "palette": branding.palette(provider.accent_color),
        "terms": _terms(provider),
    }
    return TemplateResponse(
        request, _TEMPLATES + template, {**base, **(context or {})}, status=status
    )


def _terms(provider: Provider) -> list[tuple[str, str]]:
    links = [
        (gettext("terms of service"), provider.tos_url),
        (gettext("privacy policy"), provider.privacy_url),
    ]
    return [(label, url) for label, url in links if url]


def _xml(body: bytes, status: int = HTTPStatus.OK) -> HttpResponse:
    return HttpResponse(body, content_type=XML, status=status)


def _document(
    provider: Provider, code: str, message: str, status: int = HTTPStatus.OK
) -> HttpResponse:
    return _xml(registration.exit_document(provider=provider, code=code, message=message), status)


def _outage(
    request: HttpRequest, slug: str, provider: Provider | None, error: Exception
) -> HttpResponse:
    """The ERROR document (503) when the database cannot be reached: the client waits for XML.

    Nothing was created (create_account keeps nothing it could not finish; a row it could
    not mark ready is rolled back by the reconciler). The document names the provider's main
    domain if the provider was read before the database went, else the signed state's.
    """
    logger.error("registration %s: database unavailable: %s", slug, type(error).__name__)
    try:
        known = registration.read_flow(request.POST.get("state", ""), slug=slug).domain
    except (FlowInvalid, FlowExpired):
        known = ""
    body = registration.exit_document(
        provider=provider,
        code="ERROR",
        message=registration.describe_error(DatabaseUnavailable()),
        fallback_domain=known,
    )
    return _xml(body, HTTPStatus.SERVICE_UNAVAILABLE)


def _address_page(
    request: HttpRequest,
    provider: Provider,
    flow: Flow,
    form: AddressForm,
    *,
    alternatives: list[str] | None = None,
    status: int = HTTPStatus.OK,
    restore_fragment: bool = False,
) -> TemplateResponse:
    context = {
        "form": form,
        "state": flow.sign(),
        "alternatives": alternatives or [],
        "restore_fragment": restore_fragment,
    }
    return _page(request, provider, "address.html", context, status)


def _address_form(
    provider: Provider, flow: Flow, data: Any = None, local_part: str = ""
) -> AddressForm:
    """The address step's form; a flow with an onboarding token offers only its domain."""
    return AddressForm(
        data,
        provider=provider,
        domains=[flow.domain] if flow.token_ok else None,
        initial={
            "first_name": flow.first_name,
            "last_name": flow.last_name,
            "local_part": local_part or flow.local_part,
            "domain": flow.domain,
        },
    )


def _password_page(
    request: HttpRequest,
    provider: Provider,
    flow: Flow,
    form: PasswordForm | None = None,
    status: int = HTTPStatus.OK,
) -> TemplateResponse:
    form = form or _password_form(provider)
    return _page(
        request,
        provider,
        "password.html",
        {"form": form, "state": flow.sign(), "flow": flow},
        status,
    )


def _password_form(provider: Provider, data: Any = None) -> PasswordForm:
    return PasswordForm(
        data,
        terms_required=bool(_terms(provider)),
        min_length=provider.password_min_length,
    )


def _flow_problem(request: HttpRequest, provider: Provider, error: PortalError) -> TemplateResponse:
    expired = isinstance(error, FlowExpired)
    return _page(request, provider, "restart.html", {"expired": expired}, HTTPStatus.BAD_REQUEST)


def _closed(request: HttpRequest, provider: Provider, *, midway: bool = False) -> TemplateResponse:
    """The "registration is closed" page; `midway`: met on a later step, so it says that
    nothing was created."""
    return _page(request, provider, "closed.html", {"midway": midway}, HTTPStatus.FORBIDDEN)


def _limited(request: HttpRequest, provider: Provider) -> TemplateResponse | None:
    """The friendly "try again later" page when this client is over its attempts, else None."""
    try:
        ratelimit.enforce(request, ratelimit.REGISTRATION_PAGES)
    except ratelimit.RateLimited as exc:
        retry_after = exc.retry_after
        status = HTTPStatus.TOO_MANY_REQUESTS
    except ratelimit.RateLimiterUnavailable as exc:
        retry_after = exc.retry_after
        status = HTTPStatus.SERVICE_UNAVAILABLE
    else:
        return None
    response = _page(
        request,
        provider,
        "rate_limited.html",
        {"minutes": max(1, -(-retry_after // 60)), "busy": status != HTTPStatus.TOO_MANY_REQUESTS},
        status,
    )
    response["Retry-After"] = str(retry_after)
    return response


def _provider(slug: str) -> Provider:
    try:
        return registration.provider_for_page(slug)
    except registration.ProviderNotFound:
        raise Http404(gettext("No provider registers under this name here.")) from None


def _raw_query(request: HttpRequest) -> bytes:
    """The query string as the client sent it (WSGI hands it over as ISO-8859-1 text)."""
    query: str = request.META.get("QUERY_STRING", "")
    try:
        return query.encode("iso-8859-1")
    except UnicodeEncodeError:  # the test client passes text through unchanged
        return query.encode("utf-8")


# ----- steps ----------------------------------------------------------------------------------


def _registration_page(
    view: Callable[[HttpRequest, Provider], HttpResponse],
) -> Callable[[HttpRequest, str], HttpResponse]:
    """What every page does first: find the provider (404 if none). Then `view` runs; the
    database unreachable anywhere on the way answers the ERROR document, never a 500 page."""

    @functools.wraps(view)
    def page(request: HttpRequest, slug: str) -> HttpResponse:
        provider: Provider | None = None
        try:
            provider = _provider(slug)
            return view(request, provider)
        except _DB_DOWN as exc:
            return _outage(request, slug, provider, exc)

    return page


def _flow_step(
    view: Callable[[HttpRequest, Provider, Flow], HttpResponse],
) -> Callable[[HttpRequest, Provider], HttpResponse]:
    """What every step does next: count the attempt against the rate limit (every step's
    POST, whatever it carries: no field of the form decides whether it counts), read the
    signed state. Then `view` runs."""

    @functools.wraps(view)
    def step(request: HttpRequest, provider: Provider) -> HttpResponse:
        if limited := _limited(request, provider):
            return limited
        try:
            flow = registration.read_flow(request.POST.get("state", ""), slug=provider.slug)
        except (FlowInvalid, FlowExpired) as exc:
            return _flow_problem(request, provider, exc)
        return view(request, provider, flow)

    return step


@strict_page
@require_GET
@_registration_page
def start(request: HttpRequest, provider: Provider) -> HttpResponse:
    """The entry page a mail client opens with ?email=&first_name=&last_name= (raw values)."""
    flow, local_part, _domain = registration.start_flow(
        provider=provider, raw_query=_raw_query(request)
    )
    gate = provider.registration_gate()
    if gate == Registration.CLOSED:
        return _closed(request, provider)
    if gate == Registration.TOKEN:
        return _page(request, provider, "token.html", {"form": TokenForm(), "state": flow.sign()})
    # Only the entry page may take names from the URL's fragment (static/js/registration.js).
    form = _address_form(provider, flow, local_part=local_part)
    return _address_page(request, provider, flow, form, restore_fragment=True)


@sensitive_post_parameters("token")
@strict_page
@require_POST
@_registration_page
@_flow_step
def token(request: HttpRequest, provider: Provider, flow: Flow) -> HttpResponse:
    form = TokenForm(request.POST)
    if form.is_valid():
        try:
            flow = registration.redeem_invitation(
                provider=provider, flow=flow, token=form.cleaned_data["token"]
            )
        except registration.InvitationRefused as exc:
            form.add_error("token", exc.message)
        else:
            return _address_page(request, provider, flow, _address_form(provider, flow))
    return _page(
        request,
        provider,
        "token.html",
        {"form": form, "state": flow.sign()},
        HTTPStatus.BAD_REQUEST,
    )


@strict_page
@require_POST
@_registration_page
@_flow_step
def address(request: HttpRequest, provider: Provider, flow: Flow) -> HttpResponse:
    """Check the chosen address (typed, or an offered alternative, whose domain counts as
    well); on success, the password step. "Change address" (`edit`) shows this step again."""
    if request.POST.get("edit"):  # "change address" from the password step: no check
        return _address_page(request, provider, flow, _address_form(provider, flow))
    form = _address_form(provider, flow, request.POST)
    if not form.is_valid():
        return _address_page(request, provider, flow, form, status=HTTPStatus.BAD_REQUEST)
    typed, domain = form.cleaned_data["local_part"], form.cleaned_data["domain"]
    try:
        chosen = registration.choose_address(
            provider=provider,
            flow=flow,
            first_name=form.cleaned_data["first_name"],
            last_name=form.cleaned_data["last_name"],
            local_part=typed,
            domain=domain,
        )
    except (NameRefused, AddressTaken) as exc:
        form.add_error("local_part", registration.describe_error(exc))
        named = replace(
            flow,
            first_name=form.cleaned_data["first_name"],
            last_name=form.cleaned_data["last_name"],
            local_part="",
            domain=domain,
        )
        offered = registration.alternatives(provider=provider, flow=named, typed=typed)
        return _address_page(
            request, provider, named, form, alternatives=offered, status=HTTPStatus.BAD_REQUEST
        )
    except _DB_DOWN:
        raise
    except PortalError as exc:
        if exc.code == "reg_disabled":
            return _closed(request, provider, midway=True)
        field = "first_name" if exc.code in _NAME_CODES else "local_part"
        form.add_error(field, registration.describe_error(exc))
        return _address_page(request, provider, flow, form, status=HTTPStatus.BAD_REQUEST)
    return _password_page(request, provider, chosen)


@sensitive_post_parameters("password", "password_again")
@strict_page
@require_POST
@_registration_page
@_flow_step
@sensitive_variables()  # the password, and the document that carries it, in every frame below
def password(request: HttpRequest, provider: Provider, flow: Flow) -> HttpResponse:
    """Create the account; answer its clientConfig with the literal username and password."""
    form = _password_form(provider, request.POST)
    if not form.is_valid():
        return _password_page(request, provider, flow, form, HTTPStatus.BAD_REQUEST)
    try:
        done = registration.register(
            provider=provider, flow=flow, password=form.cleaned_data["password"]
        )
    except WeakPassword as exc:
        form.add_error("password", exc.message)
        return _password_page(request, provider, flow, form, HTTPStatus.BAD_REQUEST)
    except (AddressTaken, NameRefused) as exc:
        # Taken since it was chosen, or this finished form sent again: nothing was created.
        shown = {**_address_form(provider, flow).initial, "state": flow.sign()}
        retry = _address_form(provider, flow, shown)
        retry.is_valid()
        retry.add_error(None, gettext("No account was created. Choose another address."))
        retry.add_error("local_part", registration.describe_error(exc))
        offered = registration.alternatives(provider=provider, flow=flow, typed=flow.local_part)
        return _address_page(
            request, provider, flow, retry, alternatives=offered, status=HTTPStatus.CONFLICT
        )
    except _DB_DOWN:
        raise
    except PortalError as exc:
        if exc.code == "reg_disabled":
            return _closed(request, provider, midway=True)
        if exc.code == FlowInvalid.code:
            return _flow_problem(request, provider, exc)
        logger.error("registration %s: %s (%s)", provider.slug, exc.code, exc.message)
        # The mail server (503), or an onboarding token withdrawn or used up meanwhile.
        return _document(
            provider, "ERROR", registration.describe_failure(exc), HTTPStatus(exc.status)
        )
    if done.document is None:
        return _page(
            request, provider, "approval.html", {"address": done.address}, HTTPStatus.ACCEPTED
        )
    response = _xml(done.document)
    response["X-Thunderbird-Account-Name"] = header_name(done.full_name or done.address)
    response["X-Thunderbird-Account-Email"] = done.address
    return response


@strict_page
@require_POST
@_registration_page
def leave(request: HttpRequest, provider: Provider) -> HttpResponse:
    """Cancel (USER_CANCEL, or the goodbye page if the provider chose it) or back (USER_BACK)."""
    form = ExitForm(request.POST)
    action = form.cleaned_data["action"] if form.is_valid() else "cancel"
    if action == "back":
        return _document(
            provider, "USER_BACK", gettext("The person wants to choose another address.")
        )
    if action == "close":
        return _document(
            provider,
            "USER_CANCEL",
            gettext("The new account awaits the provider's approval; add it once approved."),
        )
    if provider.cancel_answer == CancelAnswer.PAGE:
        return _page(request, provider, "goodbye.html")
    return _document(provider, "USER_CANCEL", gettext("The person cancelled the registration."))


@require_GET
def logo(request: HttpRequest, slug: str) -> HttpResponse:
    """The provider's logo as uploaded in admin; SVG sandboxed so it can never run script."""
    provider = Provider.objects.filter(slug=slug).exclude(logo_type="").first()
    if provider is None:
        raise Http404()
    body = bytes(provider.logo)
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=HTTPStatus.NOT_MODIFIED)
    else:
        response = HttpResponse(body, content_type=provider.logo_type)
    response["ETag"] = etag
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    patch_cache_control(response, public=True, max_age=settings.AUTOCONFIG_MAX_AGE)
    return response


def header_name(name: str) -> str:
    """A person's name as X-Thunderbird-Account-Name carries it.

    Thunderbird reads the header's bytes one character each (ISO-8859-1), so a name that
    fits ISO-8859-1 is sent in it exactly (Django encodes headers so); any other is sent
    transliterated to ASCII (anyascii) rather than as bytes Thunderbird would garble.
    """
    try:
        name.encode("iso-8859-1")
    except UnicodeEncodeError:
        return branding.ascii_name(name) or name.encode("ascii", "replace").decode()
    return name
