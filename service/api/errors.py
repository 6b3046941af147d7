"""Every error a client can cause becomes a 4xx JSON body that says what was wrong.

Body: ``{"error": {"status", "code", "message", "field"}}``. Anything unexpected is a 500 with
a generic message and the request id; the stack trace goes to the log, never to the client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.algorithms import InputError
from service.backends.base import BackendUnavailable
from service.engine.engine import SuspectedHubError
from service.engine.persistence import StorageError
from service.engine.state import UnknownIdError
from service.logs import request_id

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status, raised by routes and dependencies."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses=`` entries documenting the error body for these status codes."""
    from service.api.models import ErrorResponse

    return {code: {"model": ErrorResponse} for code in codes}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"status": status, "code": code, "message": message, "field": field}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _location(loc: tuple[int | str, ...]) -> str:
    # only the first element says where the value was; a field may be named "query" itself
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc if not _union_tag(p)) or "body"


def _union_tag(part: int | str) -> bool:
    """Pydantic names the union member it tried in ``loc`` (``Condition``, ``str``,
    ``function-after[_one(), Condition]``); our field names are lower-case identifiers."""
    if not isinstance(part, str):
        return False
    return "[" in part or part[:1].isupper() or part in ("str", "int", "float", "bool")


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "invalid JSON")
        return error_response(400, "malformed_json", f"request body is not valid JSON: {reason}")
    messages = []
    for error in errors[:5]:
        where = _location(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        messages.append(f"{where}: {message}")
    if len(errors) > 5:
        messages.append(f"(+{len(errors) - 5} more)")
    first = _location(tuple(errors[0].get("loc", ()))) if errors else None
    return error_response(422, "invalid_request", "; ".join(messages), first)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return error_response(422, "invalid_input", str(exc), exc.field)

    @app.exception_handler(SuspectedHubError)
    async def _suspected_hub(_: Request, exc: SuspectedHubError) -> JSONResponse:
        return error_response(422, "suspected_hub", str(exc), exc.field)

    @app.exception_handler(UnknownIdError)
    async def _unknown_id(_: Request, exc: UnknownIdError) -> JSONResponse:
        return error_response(404, "not_found", str(exc), exc.field)

    @app.exception_handler(BackendUnavailable)
    async def _backend_unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        log.warning("backend unavailable", extra={"error": str(exc)})
        message = f"search backend unavailable, nothing was changed; retry later ({exc})"
        return error_response(503, "backend_unavailable", message, headers={"Retry-After": "5"})

    @app.exception_handler(StorageError)
    async def _storage_error(_: Request, exc: StorageError) -> JSONResponse:
        log.error("gallery change not stored", extra={"error": str(exc)})
        if exc.full:
            return error_response(507, "insufficient_storage", str(exc))
        message = f"{exc}; nothing was changed, retry later"
        return error_response(503, "storage_unavailable", message, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", None) or request_id.get()
        token = request_id.set(rid)  # the log line carries it too
        try:
            log.exception("unhandled error")
        finally:
            request_id.reset(token)
        message = f"internal error (request id {rid})"
        headers = {"X-Request-ID": rid} if rid else None
        return error_response(500, "internal_error", message, headers=headers)
