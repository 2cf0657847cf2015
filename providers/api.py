"""DRF endpoints of providers: the provider list, suggestions (fan-out), the provider engine.

Thin edges: parse the query, make one service call, shape the answer (specs/provisioner.md).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from django.utils.cache import patch_cache_control
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import ratelimit
from portal.proxies import client_ip
from providers.models import SuggestionSettings
from providers.serializers import (
    ErrorOut,
    NameQueryIn,
    ProviderOut,
    SuggestionEntryOut,
    SuggestionQueryIn,
)
from providers.services import fanout, listing, suggest

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
