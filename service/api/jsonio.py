"""Fast JSON in and out: orjson where it gives exactly what the stdlib ``json`` would.

Request bodies of search and gallery changes are mostly floats (64 queries × 384 dimensions
is ~25k numbers, ~0.5 MB): the stdlib parser takes several milliseconds on them, orjson a
fraction. orjson is stricter, never more lenient: it rejects NaN/Infinity literals, lone
surrogates, a byte-order mark and numbers that overflow a double, all of which ``json`` accepts.
So a body orjson refuses is parsed again by ``json``, which accepts it or raises the very error
clients always got. The one thing orjson reads *differently* is an integer beyond 64 bits (it
returns a float): bodies with an integer of 19+ digits go straight to ``json``. Validation
(pydantic, the OpenAPI schema, every 4xx message) is untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service.api.errors import ApiError, error_responses

#: an integer (part) of 19 or more digits: possibly beyond int64, where orjson returns a float
_LONG_INTEGER = re.compile(rb"(?<![.\d])\d{19}")


def parse_json(body: bytes) -> Any:
    """``json.loads(body)``, but computed by orjson whenever that gives the same result."""
    if not _LONG_INTEGER.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # maybe valid for json (NaN, BOM, …); if not, json raises the usual error
    return json.loads(body)


class OrjsonResponse(JSONResponse):
    """A JSON response serialised by orjson (numpy arrays and scalars included).

    Routes return it with content already shaped like their ``response_model`` (which still
    documents the schema): re-validating thousands of hits through pydantic costs more than
    building them. A JSONResponse, so that OpenAPI documents the route's model as JSON."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class OrjsonRequest(Request):
    """A request whose ``json()`` is :func:`parse_json` (what FastAPI calls to read a body)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


def is_json(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, parameters (charset) ignored."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class OrjsonRoute(APIRoute):
    """An APIRoute that reads JSON bodies with :class:`OrjsonRequest`, and refuses a body sent
    without a JSON content type (415) instead of reporting its bytes as "not a dictionary"."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if {"POST", "PUT"} & {m.upper() for m in kwargs.get("methods") or ()}:
            kwargs["responses"] = {**error_responses(415), **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def route(request: Request) -> Response:
            if takes_body and not is_json(request.headers.get("content-type")):
                message = "body: expected application/json (send Content-Type: application/json)"
                raise ApiError(415, "unsupported_media_type", message, field="body")
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route
