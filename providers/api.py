"""DRF endpoints of providers: the provider list, suggestions (fan-out), the provider engine,
and DCACCOUNT (what Delta Chat posts to when it scans an onboarding code).

Thin edges: parse the query, make one service call, shape the answer (specs/provisioner.md).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from django.utils.cache import patch_cache_control
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import ratelimit
from portal.api import FirstRenderer
from portal.errors import PortalError
from portal.proxies import client_ip
from providers import qr
from providers.models import SuggestionSettings
from providers.serializers import (
    DCAccountOut,
    DCAccountRefusalOut,
    ErrorOut,
    NameQueryIn,
    ProviderOut,
    SuggestionEntryOut,
    SuggestionQueryIn,
)
from providers.services import fanout, listing, onboarding, suggest

logger = logging.getLogger(__name__)

PARTIAL_HEADER = "X-Suggestions-Partial"


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _name_query(data: dict[str, Any]) -> suggest.NameQuery:
    return suggest.check_name_query(
        first_name=data.get("first_name", ""),
        last_name=data.get("last_name", ""),
        country=data.get("country", ""),
    )


class ProviderListView(APIView):
    """GET /api/v1/providers: every provider a client may offer for sign-up."""

    @extend_schema(operation_id="providers_list", responses={HTTPStatus.OK: ProviderOut(many=True)})
    def get(self, request: Request) -> Response:
        found = listing.provider_list()
        if found.etag in _etags(request.headers.get("If-None-Match", "")):
            response = Response(status=HTTPStatus.NOT_MODIFIED)
        else:
            response = Response(found.entries)
        response["ETag"] = found.etag
        patch_cache_control(response, public=True, max_age=300)
        return response


class SuggestionsView(APIView):
    """GET /api/v1/suggestions: ask the providers at once, one entry per provider."""

    @extend_schema(
        operation_id="suggestions",
        parameters=[SuggestionQueryIn],
        responses={
            HTTPStatus.OK: SuggestionEntryOut(many=True),
            HTTPStatus.BAD_REQUEST: ErrorOut,
            HTTPStatus.TOO_MANY_REQUESTS: ErrorOut,
            HTTPStatus.SERVICE_UNAVAILABLE: ErrorOut,
        },
    )
    def get(self, request: Request) -> Response:
        ratelimit.enforce(request, ratelimit.SUGGESTIONS, rate=SuggestionSettings.current_rate())
        serializer = SuggestionQueryIn(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = fanout.collect_suggestions(
            query=_name_query(data),
            provider_ids=fanout.parse_provider_ids(data.get("providers", "")),
            debug=data["debug"],
        )
        response = Response(result.entries)
        if result.partial:
            response[PARTIAL_HEADER] = "1"
        patch_cache_control(response, private=True, no_store=True)
        return response


class IsSuggestionClient(BasePermission):
    """Callers in a suggestion-client network (with its token, if it has one) of this
    provider or of every hosted provider. Checked before the input is read (DRF checks
    permissions first), so that nobody else learns anything from the answers."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        scheme, _space, token = request.headers.get("Authorization", "").partition(" ")
        suggest.check_suggestion_client(  # raises NotAllowed (403 not_allowed)
            slug=view.kwargs["slug"],
            client_address=client_ip(request),
            token=token.strip() if scheme.lower() == "bearer" else "",
        )
        return True


class ProviderSuggestView(APIView):
    """GET /providers/<slug>/suggest: this portal as one hosted provider's suggestion engine."""

    permission_classes = [IsSuggestionClient]

    @extend_schema(
        operation_id="provider_suggest",
        parameters=[
            NameQueryIn,
            OpenApiParameter(
                "Authorization",
                location=OpenApiParameter.HEADER,
                required=False,
                description="Bearer <token>, where the caller's network has a token.",
            ),
        ],
        responses={
            HTTPStatus.OK: SuggestionEntryOut,
            HTTPStatus.BAD_REQUEST: ErrorOut,
            HTTPStatus.FORBIDDEN: ErrorOut,
            HTTPStatus.NOT_FOUND: ErrorOut,
        },
    )
    def get(self, request: Request, slug: str) -> Response:
        serializer = NameQueryIn(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        answer = suggest.answer_suggestion_client(
            slug=slug, query=_name_query(serializer.validated_data)
        )
        response = Response(answer.entry())
        patch_cache_control(response, private=True, no_store=True)
        return response


# ----- DCACCOUNT (specs/qr.md) ----------------------------------------------------------------


def _refused(description: str) -> OpenApiResponse:
    return OpenApiResponse(DCAccountRefusalOut, description=description)


DCACCOUNT_SCHEMA = extend_schema(
    tags=["dcaccount"],
    description=(
        "Create an account with an onboarding token (a scanned DCACCOUNT code). The body is "
        "empty; the answer is not idempotent: a retry after a lost answer spends another use. "
        "Every refusal carries a `reason` Delta Chat shows to the person, and a `code`."
    ),
    request=None,
    responses={
        HTTPStatus.OK: DCAccountOut,
        HTTPStatus.FORBIDDEN: _refused(
            "token_unknown, token_revoked, approval_required, reg_disabled"
        ),
        HTTPStatus.METHOD_NOT_ALLOWED: _refused("method_not_allowed: anything but POST"),
        HTTPStatus.GONE: _refused("token_expired, token_used_up"),
        HTTPStatus.TOO_MANY_REQUESTS: _refused("rate_limited (with Retry-After)"),
        HTTPStatus.INTERNAL_SERVER_ERROR: _refused("server_error: an unexpected failure"),
        HTTPStatus.SERVICE_UNAVAILABLE: _refused(
            "mailbox_failed, database_unavailable, ratelimit_unavailable (with Retry-After)"
        ),
    },
)


@method_decorator(never_cache, name="dispatch")
class DCAccountView(APIView):
    """POST /dcaccount/<token>: what a scanned DCACCOUNT code does."""

    content_negotiation_class = FirstRenderer  # Delta Chat's Accept is not ours to refuse
    http_method_names = ["post"]  # anything else: our 405 with a reason (Allow: POST)

    @DCACCOUNT_SCHEMA
    @extend_schema(
        operation_id="dcaccount_redeem",
        parameters=[
            OpenApiParameter(
                "token", str, OpenApiParameter.PATH, description="The secret of the code."
            )
        ],
    )
    def post(self, request: Request, token: str) -> Response:
        return _redeem(request, token)

    def http_method_not_allowed(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        return _wrong_method()


@method_decorator(never_cache, name="dispatch")
class NewEmailView(APIView):
    """POST /new_email?t=<token>: mailadm's form of the same call."""

    content_negotiation_class = FirstRenderer
    http_method_names = ["post"]

    @DCACCOUNT_SCHEMA
    @extend_schema(
        operation_id="dcaccount_new_email",
        parameters=[
            OpenApiParameter(
                "t", str, OpenApiParameter.QUERY, required=True, description="The token."
            )
        ],
    )
    def post(self, request: Request) -> Response:
        return _redeem(request, request.query_params.get("t", ""))

    def http_method_not_allowed(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        return _wrong_method()


def _redeem(request: Request, secret: str) -> Response:
    """Create an account and answer qr.dcaccount_answer, or refuse (qr.dcaccount_refusal).

    The secret is never echoed, and the request log redacts it (portal.redact). The body
    is ignored: Delta Chat sends none.
    """
    try:
        ratelimit.enforce(request._request, ratelimit.DCACCOUNT)
        redemption = onboarding.redeem_token(secret=secret)
    except (ratelimit.RateLimited, ratelimit.RateLimiterUnavailable) as exc:
        response = _refusal(exc.status, exc.code, exc.message)
        response["Retry-After"] = str(exc.retry_after)
        return response
    except PortalError as exc:
        logger.info("dcaccount: refused: %s", exc.code)
        return _refusal(exc.status, exc.code, exc.message)
    except Exception:
        logger.exception("dcaccount: failed")
        return _refusal(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            "server_error",
            "The server could not create the account; try again later.",
        )
    return Response(
        qr.dcaccount_answer(
            address=redemption.address, password=redemption.password, lifetime=redemption.lifetime
        )
    )


def _wrong_method() -> Response:
    response = _refusal(
        HTTPStatus.METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Scan this code with Delta Chat: it creates an account when the app sends it.",
    )
    response["Allow"] = "POST"
    return response


def _refusal(status: int, code: str, reason: str) -> Response:
    return Response(qr.dcaccount_refusal(code=code, reason=reason), status=status)
