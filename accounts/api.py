"""DRF endpoints of in-band registration: POST /api/v1/register and /api/v1/register/verify.

Every answer, refusals included, is a CPE3 envelope built by accounts.cpe3; malformed input
of any kind is a bad_request, never a 500.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import cpe3, web
from accounts.models import AccountStatus
from accounts.serializers import RegisterErrorOut, RegisterIn, RegisterOut, RegisterVerifyIn
from accounts.services import registration, verification
from accounts.services.registration import BadRequest, InbandRegistration
from portal import ratelimit
from portal.errors import PortalError
from portal.proxies import client_ip
from providers.domains import DomainError, to_ascii

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"


class BoundedJSONParser(BaseParser):
    """application/json read up to REGISTRATION_MAX_BODY_BYTES, strictly.

    Refuses what json.loads would let through: NaN/Infinity, duplicate keys (which password
    was meant?), lone surrogates and NUL characters (the database cannot store them).
    """

    media_type = "application/json"

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        limit = settings.REGISTRATION_MAX_BODY_BYTES
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise exceptions.ParseError(f"The body is larger than {limit} bytes.")
        try:
            data = json.loads(
                raw.decode("utf-8"),
                object_pairs_hook=_object_without_duplicates,
                parse_constant=_refuse_constant,
            )
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too
            raise exceptions.ParseError("The body is not valid JSON (UTF-8).") from None
        if not _clean_strings(data):
            raise exceptions.ParseError("The body holds a NUL character or a lone surrogate.")
        return data


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _clean_strings(data: Any) -> bool:
    """True if no string (key or value) holds NUL or a surrogate, iteratively (no recursion)."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item or any("\ud800" <= char <= "\udfff" for char in item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def flatten_errors(detail: Any, path: str = "") -> dict[str, str]:
    """DRF's nested error detail as {"payload.thirdPIDs[0].value": "why"}."""
    flat: dict[str, str] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key in {"non_field_errors", "__all__"}:
                child = path or "body"
            elif isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                child = f"{path}[{key}]"
            else:
                child = f"{path}.{key}" if path else str(key)
            flat.update(flatten_errors(value, child))
    elif isinstance(detail, list) and detail and all(isinstance(x, str) for x in detail):
        flat[path or "body"] = " ".join(str(x) for x in detail)
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            if value:
                flat.update(flatten_errors(value, f"{path}[{index}]"))
    else:
        flat[path or "body"] = str(detail)
    return flat


class CPE3View(APIView):
    """Shared by the registration endpoints: envelope answers for every refusal."""

    parser_classes = [BoundedJSONParser]
    message_type = cpe3.REGISTER
    policy = ratelimit.REGISTRATION

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message_id: str | None = None
        self.origin = ""

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return self.envelope_exception

    def envelope_exception(self, exc: Exception, context: dict[str, Any]) -> Response | None:
        """PortalError and DRF's own refusals (405, 406, ...) as failure envelopes."""
        status: int | None = None
        if isinstance(exc, PortalError):
            error = exc
        elif isinstance(exc, exceptions.UnsupportedMediaType | exceptions.ParseError):
            error = BadRequest({"body": str(exc.detail)})
        elif isinstance(exc, exceptions.APIException):
            error = BadRequest({"request": str(exc.detail)}, message=str(exc.detail))
            status = exc.status_code
        else:
            return None  # a bug: Django's 500 handling and logging take over
        answer = cpe3.failure(
            message_id=self.message_id,
            origin=self.origin or self._host(),
            error=error,
            status=status,
            message_type=self.message_type,
        )
        self.log_outcome(answer)
        return Response(answer.body, status=answer.status, headers=answer.headers)

    def _host(self) -> str:
        request = self.request
        host = request.get_host() if request is not None else ""
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    def log_outcome(self, answer: cpe3.Answer) -> None:
        """One line per outcome: never the body, the password or a code."""
        payload = answer.body.get("payload", {})
        outcome = payload.get("errID") or payload.get("verification") or "created"
        replayed = answer.headers.get("Idempotent-Replayed") == "true"
        logger.info(
            "%s outcome=%s status=%d to=%s id=%r ip=%s%s",
            self.message_type,
            outcome,
            answer.status,
            self.origin or "-",
            self.message_id,
            client_ip(self.request),
            " replayed" if replayed else "",
        )

    def read_envelope(
        self, request: Request, serializer_class: type[RegisterIn | RegisterVerifyIn]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Rate limit, then the body: (raw body, validated data) or BadRequest."""
        try:
            ratelimit.enforce(request, self.policy)
        except PortalError:
            # Every request counts, readable or not; a refusal still echoes a readable id.
            with contextlib.suppress(PortalError, exceptions.APIException):
                self._parse(request)
            raise
        return self._parse(request, serializer_class)

    def _parse(
        self,
        request: Request,
        serializer_class: type[RegisterIn | RegisterVerifyIn] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        content_type = request.content_type.split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            # 400, not 415: the spec's table has bad_request for any malformed request.
            raise BadRequest({"Content-Type": "Send application/json."})
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.REGISTRATION_MAX_BODY_BYTES:
            raise BadRequest(
                {"body": f"The body is larger than {settings.REGISTRATION_MAX_BODY_BYTES} bytes."}
            )
        body = request.data
        if not isinstance(body, dict) or not body:
            raise BadRequest({"body": "Send the message as a JSON object."})
        if isinstance(body.get("id"), str):
            self.message_id = body["id"]
        to = body.get("to")
        if isinstance(to, list) and len(to) == 1 and isinstance(to[0], str):
            with contextlib.suppress(DomainError):
                self.origin = to_ascii(to[0])
        if serializer_class is None:
            return body, {}
        serializer = serializer_class(data=body)
        if not serializer.is_valid():
            raise BadRequest(flatten_errors(serializer.errors))
        return body, serializer.validated_data

    def answer(self, answer: cpe3.Answer) -> Response:
        self.log_outcome(answer)
        return Response(answer.body, status=answer.status, headers=answer.headers)


_FAILURES = {
    HTTPStatus.BAD_REQUEST: RegisterErrorOut,
    HTTPStatus.FORBIDDEN: RegisterErrorOut,
    HTTPStatus.CONFLICT: RegisterErrorOut,
    HTTPStatus.UNPROCESSABLE_ENTITY: RegisterErrorOut,
    HTTPStatus.TOO_MANY_REQUESTS: RegisterErrorOut,
    HTTPStatus.SERVICE_UNAVAILABLE: RegisterErrorOut,
}


class RegisterView(CPE3View):
    """In-band registration (specs/inband-registration.md; extensions in docs/api.md)."""

    @extend_schema(
        operation_id="register",
        request=RegisterIn,
        responses={HTTPStatus.CREATED: RegisterOut, HTTPStatus.ACCEPTED: RegisterOut, **_FAILURES},
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                location=OpenApiParameter.HEADER,
                required=False,
                description="Idempotency key; wins over the envelope id.",
            )
        ],
    )
    @sensitive_variables()  # the password: out of error reports (this frame and below)
    def post(self, request: Request) -> Response:
        body, data = self.read_envelope(request, RegisterIn)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not (0 < len(key) <= 200 and key.isprintable()):
            raise BadRequest({IDEMPOTENCY_HEADER: "1 to 200 printable characters."})
        payload = data["payload"]
        username = payload.get("username")
        answer = registration.register_inband(
            registration=InbandRegistration(
                message_id=data["id"],
                domain=data["to"][0],
                origin=self.origin or self._host(),
                username=username,
                third_pids=tuple((p["type"], p["value"]) for p in payload.get("thirdPIDs", [])),
                password=payload["password"],
                login_on_success=payload.get("loginOnSuccess", False),
                client=web.client_info(request),
                held_session=web.session_token(request),
            ),
            idempotency_key=key or data["id"],
            request_body=body,
        )
        return self.answer(answer)


class RegisterVerifyView(CPE3View):
    """Confirm the code mailed to a pending registration (extension; docs/api.md)."""

    message_type = cpe3.VERIFY
    policy = ratelimit.REGISTRATION_VERIFY

    @extend_schema(
        operation_id="register_verify",
        request=RegisterVerifyIn,
        responses={
            HTTPStatus.OK: RegisterOut,
            HTTPStatus.GONE: RegisterErrorOut,
            **_FAILURES,
        },
    )
    def post(self, request: Request) -> Response:
        _body, data = self.read_envelope(request, RegisterVerifyIn)
        payload = data["payload"]
        account = verification.verify_registration(
            domain=data["to"][0],
            user_id=payload.get("userID"),
            email=payload.get("email"),
            code=payload["code"],
        )
        answer = cpe3.success(
            message_id=data["id"],
            origin=account.domain.name,
            payload={
                "userID": cpe3.user_id(account.local_part, account.domain.name),
                "verification": "done",
                **({"approval": "pending"} if account.status == AccountStatus.APPROVAL else {}),
            },
            status=HTTPStatus.OK,
            message_type=cpe3.VERIFY,
        )
        return self.answer(answer)
