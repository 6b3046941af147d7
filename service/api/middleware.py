"""ASGI middleware: request ids, access log and metrics; the request body size limit; the API
key on every read with ``HUBLESS_AUTH_READS``."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ApiError, error_response
from service.api.metrics import Metrics
from service.api.runtime import check_key, is_public
from service.logs import request_id
from service.settings import Settings

log = logging.getLogger("service.access")


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes, by Content-Length or by counting a streamed body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(scope, receive, send)
            return
        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                too_large = True
                raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # FastAPI turns any error while reading the body into its own 400: drop that
            if not too_large:
                await send(message)

        with contextlib.suppress(BodyTooLarge):  # raised only if the app does not catch it
            await self.app(scope, counting_receive, guarded_send)
        if too_large:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body exceeds the limit of {self.limit} bytes (HUBLESS_MAX_BODY_BYTES)"
        await error_response(413, "body_too_large", message)(scope, receive, send)


class ReadAuthMiddleware:
    """With ``HUBLESS_AUTH_READS``: the API key on every request, whatever route answers it
    (``/metrics``, ``/docs``, ``/openapi.json`` and unknown paths included), except
    :func:`~service.api.runtime.is_public` paths and CORS preflights (browsers send no key)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not is_public(scope["path"])
            and scope["method"] != "OPTIONS"
        ):
            try:
                check_key(Request(scope), self.settings)
            except ApiError as exc:
                response = error_response(exc.status, exc.code, exc.message, None, exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ObservabilityMiddleware:
    """Gives each request an id (``X-Request-ID``, kept if the client sent one), logs it, and
    records Prometheus counts and latency per route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming[:64] if incoming.isprintable() and incoming else uuid.uuid4().hex
        token = request_id.set(rid)
        # for the 500 handler, which runs outside this middleware (after the reset below)
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                },
            )
            request_id.reset(token)
