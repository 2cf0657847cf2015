"""DRF endpoints of the push proxy: POST /api/v1/push/subscriptions, GET/DELETE .../<id>.

Thin edges: rate limits, input shape, one service call. The IMAP password is wrapped in a
`Secret` as soon as it is read and goes nowhere but the service; request bodies are never
logged.
"""

from __future__ import annotations

import ipaddress
from http import HTTPStatus
from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import ratelimit
from portal.errors import PortalError
from providers.domains import DomainError, to_ascii
from pushproxy import imap
from pushproxy.sealing import Secret
from pushproxy.serializers import (
    ErrorOut,
    SubscriptionCreatedOut,
    SubscriptionCreateIn,
    SubscriptionOut,
)
from pushproxy.services import subscriptions


class TokenRequired(PortalError):
    code = "token_required"
    status = HTTPStatus.UNAUTHORIZED
    default_message = "Send the subscription's token: Authorization: Bearer <token>."


def _errors(*statuses: int, codes: dict[str, Any] | None = None) -> dict[int, OpenApiResponse]:
    """{code, message} answers; `codes` (code -> (status, message)) are named under theirs."""
    named: dict[int, list[str]] = {}
    for code, (status, _message) in (codes or {}).items():
        named.setdefault(int(status), []).append(code)
    return {
        status: OpenApiResponse(
            ErrorOut,
            description="{code, message}"
            + (f"; code among: {', '.join(sorted(named[status]))}" if status in named else ""),
        )
        for status in statuses
    }


class SubscriptionsView(APIView):
    """Create a subscription: the answer waits a few seconds for the IMAP login."""

    @extend_schema(
        operation_id="push_subscription_create",
        request=SubscriptionCreateIn,
        responses={
            201: OpenApiResponse(SubscriptionCreatedOut, description="logged in, watching"),
            202: OpenApiResponse(
                SubscriptionCreatedOut,
                description="no monitor answered in time; the outcome follows as a push and on GET",
            ),
            **_errors(400, 401, 409, 422, 429, 502, 503, codes=subscriptions.LOGIN_ERRORS),
        },
    )
    def post(self, request: Request) -> Response:
        ratelimit.enforce(request, ratelimit.PUSH_SUBSCRIBE)
        serializer = SubscriptionCreateIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        given = data["imap"]
        mailbox = imap.Mailbox(
            host=_host(given["host"]),
            port=given["port"],
            security=given["security"],
            username=given["username"],
            mailbox=given["mailbox"],
        )
        request.ratelimit_subject = mailbox.account_key  # type: ignore[attr-defined]
        ratelimit.enforce(request, ratelimit.PUSH_LOGIN)
        endpoints = data["endpoints"]
        result = subscriptions.subscribe(
            mailbox=mailbox,
            password=Secret(given["password"]),
            new_mail=_endpoint(endpoints["newMail"]),
            reconnect=_endpoint(endpoints["reconnect"]),
            client_id=data["clientId"],
        )
        sub = result.subscription
        body: dict[str, Any] = {"id": sub.public_id, "token": result.token, "status": sub.status}
        if result.pending:
            return Response(body, status=HTTPStatus.ACCEPTED)
        body.update(mode=sub.mode, mailbox=sub.mailbox)
        return Response(body, status=HTTPStatus.CREATED)


_ID = OpenApiParameter("public_id", str, OpenApiParameter.PATH, description="the subscription id")
_AUTH = OpenApiParameter(
    "Authorization", str, OpenApiParameter.HEADER, required=True, description="Bearer <token>"
)


class SubscriptionView(APIView):
    """One subscription, opened by its bearer token."""

    @extend_schema(
        operation_id="push_subscription_get",
        parameters=[_ID, _AUTH],
        responses={200: SubscriptionOut, **_errors(401, 404)},
    )
    def get(self, request: Request, public_id: str) -> Response:
        sub = subscriptions.get_subscription(public_id=public_id, token=_bearer(request))
        return Response(SubscriptionOut(sub).data)

    @extend_schema(
        operation_id="push_subscription_delete",
        parameters=[_ID, _AUTH],
        request=None,
        responses={
            204: OpenApiResponse(description="ended; no reconnect push"),
            **_errors(401, 404),
        },
    )
    def delete(self, request: Request, public_id: str) -> Response:
        subscriptions.end_subscription(public_id=public_id, token=_bearer(request))
        return Response(status=HTTPStatus.NO_CONTENT)


def _bearer(request: Request) -> str:
    header: str = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRequired()
    return token.strip()


def _host(value: str) -> str:
    """An IP literal as it is (netguard checks it), a name as lower-case A-labels."""
    bare = value.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        return to_ascii(value, what="IMAP host")
    except DomainError as exc:
        raise serializers.ValidationError({"imap": {"host": [str(exc)]}}) from None


def _endpoint(given: dict[str, Any]) -> subscriptions.Endpoint:
    return subscriptions.endpoint_format(given["url"], given.get("keys"), given.get("format"))
