"""PortalError and its kinds: a stable machine-readable code, a human message, an HTTP status."""

from __future__ import annotations

from http import HTTPStatus


class PortalError(Exception):
    """A refusal the caller can act on. Services raise these; edges render them."""

    code = "error"
    status = HTTPStatus.BAD_REQUEST
    default_message = "The request could not be completed."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        super().__init__(self.message)

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidInput(PortalError):
    code = "invalid"
    default_message = "Some of the input is not valid."


class NotFound(PortalError):
    code = "not_found"
    status = HTTPStatus.NOT_FOUND
    default_message = "Nothing is known by that name."


class Forbidden(PortalError):
    code = "forbidden"
    status = HTTPStatus.FORBIDDEN
    default_message = "You may not do this."


class Conflict(PortalError):
    code = "conflict"
    status = HTTPStatus.CONFLICT
    default_message = "This conflicts with something that already exists."


class ServiceUnavailable(PortalError):
    code = "unavailable"
    status = HTTPStatus.SERVICE_UNAVAILABLE
    default_message = "A service this needs is not reachable; try again shortly."
