"""Every error leaves as RFC 9457 problem+json with a stable `code`; never a traceback."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    SerializationException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from kernel.db import database_unavailable
from kernel.errors import DomainError

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger(__name__)
DATABASE_RETRY_AFTER_S = 5
"""Retry-After of a 503 while PostgreSQL is out of reach (a restart takes seconds)."""

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_HTTP_CODES: dict[type[HTTPException], str] = {
    NotFoundException: "not_found",
    MethodNotAllowedException: "method_not_allowed",
    NotAuthorizedException: "unauthorized",
    PermissionDeniedException: "forbidden",
    TooManyRequestsException: "rate_limited",
}


def problem(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    detail: str,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": f"https://paygate.dev/problems/{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    headers = {"Retry-After": str(extra["retry_after"])} if "retry_after" in extra else None
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _domain_handler(request: Request[Any, Any, Any], exc: DomainError) -> Response[dict[str, Any]]:
    log.info("request rejected", code=exc.code, status=exc.status)
    return problem(request, exc.status, exc.code, exc.message, **exc.extra)


def _http_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if isinstance(exc.__cause__, SerializationException):
        # A body that is not even parseable (bad JSON, wrong encoding) is a 400.
        return problem(request, 400, "malformed_body", f"Request body is malformed: {exc.detail}")
    if isinstance(exc, ValidationException):
        # Well-formed but wrong (types, missing fields, bad values): 422 with the fields.
        return problem(request, 422, "validation_failed", str(exc.detail), errors=exc.extra or [])
    code = next((c for t, c in _HTTP_CODES.items() if isinstance(exc, t)), None)
    if code is None:
        code = "server_error" if status >= 500 else f"http_{status}"
    if status >= 500:
        log.error("http error", status=status, detail=exc.detail)
    headers = exc.headers or {}
    response = problem(request, status, code, str(exc.detail))
    response.headers.update(headers)
    return response


def _root(exc: BaseException) -> str:
    """The innermost cause's type (a DBAPIError says little; TooManyConnectionsError does)."""
    for _ in range(10):  # chains are short; never loop on a cyclic one
        inner = exc.__cause__ or getattr(exc, "orig", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return type(exc).__name__


def _unhandled(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if database_unavailable(exc):
        # An outage, not a bug: one line per request (no traceback), and a 503 that tells
        # the client when to come back.
        log.warning("database unavailable", exc_type=type(exc).__name__, cause=_root(exc))
        return problem(
            request,
            503,
            "database_unavailable",
            "The service cannot reach its database; retry later.",
            retry_after=DATABASE_RETRY_AFTER_S,
        )
    # The traceback goes to the server log (a field of the JSON line), never to the client.
    log.error("unhandled error", exc_type=type(exc).__name__, exc_info=exc)
    return problem(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal_error",
        "An internal error occurred; quote the request id when reporting it.",
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    DomainError: _domain_handler,
    HTTPException: _http_handler,
    Exception: _unhandled,
}
