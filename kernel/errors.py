"""One error hierarchy for the business packages, mapped to HTTP in one place (gateway).

Each error carries a stable machine `code` and a human message. The HTTP status is a
property of the class so the mapping lives next to the meaning, not in the controllers.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "Conflict",
    "DomainError",
    "Forbidden",
    "IllegalTransition",
    "InvalidInput",
    "MalformedBody",
    "NotFound",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
]


class DomainError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code
        self.extra = extra


class MalformedBody(DomainError):
    """The body is not even parseable (bad JSON, wrong encoding): 400 on every endpoint."""

    status = 400
    code = "malformed_body"


class InvalidInput(DomainError):
    status = 422
    code = "invalid_input"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"


class Unavailable(DomainError):
    status = 503
    code = "unavailable"
