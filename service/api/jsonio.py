"""Fast JSON in and out: orjson where it gives exactly what the stdlib ``json`` would.

Request bodies of search and gallery changes are mostly floats (64 queries × 384 dimensions
is ~25k numbers, ~0.5 MB): the stdlib parser takes several milliseconds on them, orjson a
fraction. orjson is stricter, never more lenient: it rejects NaN/Infinity literals, lone
surrogates, a byte-order mark and numbers that overflow a double, all of which ``json`` accepts.
So a body orjson refuses is parsed again by ``json``, which accepts it or raises the very error
clients always got. The one thing orjson reads *differently* is an integer beyond 64 bits (it
returns a float): bodies with an integer of 19+ digits go straight to ``json``. Validation
(pydantic, the OpenAPI schema, every 4xx message) is untouched. Nesting too deep for the parser
(orjson stops at 1024 levels, ``json`` at the recursion limit) is a JSON error (400), never a
RecursionError (500).
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

#: an integer (part) of 19 or more digits: possibly beyond int64, where orjson returns a float
_LONG_INTEGER = re.compile(rb"(?<![.\d])\d{19}")


def parse_json(body: bytes) -> Any:
    """``json.loads(body)``, but computed by orjson whenever that gives the same result."""
    if not _LONG_INTEGER.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # maybe valid for json (NaN, BOM, …); if not, json raises the usual error
    try:
        return json.loads(body)
    except RecursionError:
        raise json.JSONDecodeError("nesting too deep to parse", "", 0) from None


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


class OrjsonRoute(APIRoute):
    """An APIRoute that reads JSON bodies with :class:`OrjsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route
