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

Large bodies are parsed off the event loop, in pieces: a C parser holds the GIL for the whole
call (≈ 0.1–0.2 s for 1024 queries × 384 floats), during which no other thread, the event loop
answering ``/healthz`` included, can run. Arrays of rows of numbers (the ``queries`` and
embeddings that make a body large) are parsed a few hundred kB at a time, the rest of the body
once with those arrays replaced by placeholders; the result is the same as one parse.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread
import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service.api.errors import ApiError, error_responses

#: an integer (part) of 19 or more digits: possibly beyond int64, where orjson returns a float
_LONG_INTEGER = re.compile(rb"(?<![.\d])\d{19}")


#: a quote or an array bracket (strings are skipped whole: brackets in them are text)
_STRUCTURE = re.compile(rb'["\[\]]')
_SEPARATOR = re.compile(rb"\s*,?\s*")
TOO_DEEP = "it nests too deep to parse (metadata may nest HUBLESS_MAX_METADATA_DEPTH levels)"
#: bytes parsed per piece (a few ms of holding the GIL), and the least worth splitting
PIECE_BYTES = 256 * 1024


def parse_json(body: bytes) -> Any:
    """``json.loads(body)``, but computed by orjson whenever that gives the same result."""
    if not _LONG_INTEGER.search(body):
        try:
            if len(body) > 2 * PIECE_BYTES:
                return _parse_in_pieces(body)
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # maybe valid for json (NaN, BOM, …); if not, json raises the usual error
    try:
        return json.loads(body)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, "", 0) from None


def _string_end(body: bytes, quote: int) -> int:
    """Index just past the string that opens at ``quote`` (an escaped quote does not end it)."""
    end = body.find(b'"', quote + 1)
    while end != -1:
        backslashes = end - len(body[quote + 1 : end].rstrip(b"\\")) - quote - 1
        if backslashes % 2 == 0:
            return end + 1
        end = body.find(b'"', end + 1)
    return len(body)


def _row_arrays(body: bytes) -> list[list[tuple[int, int]]]:
    """Large arrays whose elements are all arrays holding no array: their rows' spans."""
    found: list[list[tuple[int, int]]] = []
    stack: list[tuple[int, list[tuple[int, int]], list[bool]]] = []  # start, leaf rows, inner
    position = 0
    while (match := _STRUCTURE.search(body, position)) is not None:
        token, position = match.group(), match.end()
        if token == b'"':
            position = _string_end(body, match.start())
        elif token == b"[":
            if stack:
                stack[-1][2][0] = True  # the parent holds an array: not a leaf
            stack.append((match.start(), [], [False]))
        elif stack:
            start, rows, inner = stack.pop()
            if not inner[0]:
                if stack:
                    stack[-1][1].append((start, position))
                continue
            size = position - start
            if rows and size > 2 * PIECE_BYTES and _only_rows(body, start, position, rows):
                found.append(rows)
    return found


def _only_rows(body: bytes, start: int, end: int, rows: list[tuple[int, int]]) -> bool:
    """Nothing but the rows and separators between ``[`` at start and ``]`` before end."""
    gaps = zip([start + 1] + [e for _, e in rows], [s for s, _ in rows] + [end - 1], strict=True)
    return all(_SEPARATOR.fullmatch(body, a, b) for a, b in gaps)


def _parse_in_pieces(body: bytes) -> Any:
    arrays = _row_arrays(body)
    if not arrays:
        return orjson.loads(body)
    nonce = secrets.token_hex(8)
    parts, values, cursor = [], {}, 0
    for n, rows in enumerate(arrays):
        start, end = rows[0][0], rows[-1][1]
        parsed: list[Any] = []
        piece_start = 0
        for i, (_, row_end) in enumerate(rows):
            if row_end - rows[piece_start][0] >= PIECE_BYTES or i == len(rows) - 1:
                parsed += orjson.loads(b"[" + body[rows[piece_start][0] : row_end] + b"]")
                piece_start = i + 1
        key = f"{nonce}:{n}"
        values[key] = parsed
        # the rows' enclosing brackets are just outside [start, end): replace the whole array
        array_start = body.rindex(b"[", 0, start)
        array_end = body.index(b"]", end) + 1
        parts += [body[cursor:array_start], orjson.dumps(key)]
        cursor = array_end
    skeleton = orjson.loads(b"".join([*parts, body[cursor:]]))
    return _substitute(skeleton, values)


def _substitute(tree: Any, values: dict[str, Any]) -> Any:
    """``tree`` with every placeholder string replaced by its value (iteratively)."""
    if isinstance(tree, str):
        return values.get(tree, tree)
    stack = [tree]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in list(items):
            if isinstance(child, str) and child in values:
                node[key] = values[child]
            elif isinstance(child, dict | list):
                stack.append(child)
    return tree


class OrjsonResponse(JSONResponse):
    """A JSON response serialised by orjson (numpy arrays and scalars included).

    Routes return it with content already shaped like their ``response_model`` (which still
    documents the schema): re-validating thousands of hits through pydantic costs more than
    building them. A JSONResponse, so that OpenAPI documents the route's model as JSON."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


_parsing: list[anyio.CapacityLimiter] = []  # one large body parsed at a time (made in the loop)


def _parse_limiter() -> anyio.CapacityLimiter:
    """Each thread wanting the GIL delays the event loop's next turn: parse one at a time."""
    if not _parsing:
        _parsing.append(anyio.CapacityLimiter(1))
    return _parsing[0]


class OrjsonRequest(Request):
    """A request whose ``json()`` is :func:`parse_json` (what FastAPI calls to read a body)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > 2 * PIECE_BYTES:  # off the event loop, giving the GIL back often
                limiter = _parse_limiter()
                self._json = await anyio.to_thread.run_sync(parse_json, body, limiter=limiter)
            else:
                self._json = parse_json(body)
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
