"""A small typed Python client for the hubless HTTP API, sync and async, built on httpx.

>>> from service.client import HublessClient
>>> with HublessClient("http://127.0.0.1:8000") as client:          # doctest: +SKIP
...     client.wait_ready(timeout=60)
...     hits = client.search(query_embeddings, k=5, method="dualis").results

Responses are the server's own pydantic models (:mod:`service.api.models`), so the client can
never drift from the API. Vectors may be numpy arrays or nested lists; they travel as JSON via
orjson (numpy-aware). Errors form a small hierarchy: :class:`HublessError` is the base,
:class:`HublessHTTPError` carries the service's ``{"error": {status, code, message, field}}``,
:class:`NotReadyError` is a 503 (precompute still running, or startup failed) and
:class:`HublessConnectionError` a transport failure (nothing listening, timeout).

Each endpoint is described once, as a plain function returning a :class:`Call` (what to send
and which model parses the answer); the sync and async clients only differ in how they send it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from service import __version__
from service.api.models import (
    ChangeResponse,
    DiagnosticsResponse,
    GalleryItemDetail,
    GalleryItemIn,
    GalleryPage,
    Health,
    Readiness,
    SearchResponse,
)
from service.settings import Method

__all__ = [
    "AsyncHublessClient",
    "HublessClient",
    "HublessConnectionError",
    "HublessError",
    "HublessHTTPError",
    "NotReadyError",
]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
Model = TypeVar("Model", bound=BaseModel)
VectorsLike = np.ndarray | Sequence[Sequence[float]] | Sequence[float]


# --- errors ---------------------------------------------------------------------------------


class HublessError(Exception):
    """Base of every error this client raises."""


class HublessConnectionError(HublessError):
    """The service could not be reached (refused, reset, timed out)."""


class HublessHTTPError(HublessError):
    """The service answered with an error status; fields mirror its error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        where = f" (field {field!r})" if field else ""
        super().__init__(f"HTTP {status} {code}{where}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field


class NotReadyError(HublessHTTPError):
    """503: the startup precompute is still running, or startup failed."""


def _http_error(response: httpx.Response) -> HublessHTTPError:
    """The exception for an error response, from its JSON body when it has the usual shape."""
    status = response.status_code
    code, message, field = "http_error", response.text[:500] or response.reason_phrase, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
            field = error.get("field")
        elif status == 503 and "status" in body:  # /readyz's own body
            code, message = str(body["status"]), str(body.get("detail") or body["status"])
    kind = NotReadyError if status == 503 else HublessHTTPError
    return kind(status, code, message, field)


# --- requests as data -----------------------------------------------------------------------


@dataclass(frozen=True)
class Call(Generic[Model]):
    """One API call: the request and the model its response parses into.

    ``accept``: statuses whose body is the model (``/readyz`` answers 503 with a Readiness).
    """

    method: str
    path: str
    model: type[Model]
    params: Mapping[str, Any] | None = None
    body: Any = None
    accept: tuple[int, ...] = (200,)

    def request(self, base_url: str, headers: Mapping[str, str]) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.request`` (the body JSON-encoded by orjson)."""
        kwargs: dict[str, Any] = {
            "method": self.method,
            "url": base_url + self.path,
            "headers": dict(headers),
        }
        if self.params:
            kwargs["params"] = {k: v for k, v in self.params.items() if v is not None}
        if self.body is not None:
            kwargs["content"] = orjson.dumps(self.body, option=orjson.OPT_SERIALIZE_NUMPY)
            kwargs["headers"]["content-type"] = "application/json"
        return kwargs

    def parse(self, response: httpx.Response) -> Model:
        """The response as the model, or the matching :class:`HublessHTTPError`."""
        if response.status_code not in self.accept:
            raise _http_error(response)
        try:
            return self.model.model_validate_json(response.content)
        except ValidationError as exc:
            raise HublessError(
                f"unexpected {self.model.__name__} from {self.method} {self.path}: {exc}"
            ) from exc


def _matrix(vectors: VectorsLike, field: str) -> np.ndarray:
    """(m, d) C-contiguous float32 from an array-like; one 1-D vector becomes one row."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{field}: expected a non-empty (m, d) array of vectors")
    if not np.isfinite(array).all():
        raise ValueError(f"{field}: contains NaN or infinity")
    return array


def _item(item: GalleryItemIn | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, GalleryItemIn):
        item = item.model_dump()
    embedding = _matrix(item["embedding"], f"items[{item.get('id')!r}].embedding")
    if embedding.shape[0] != 1:
        raise ValueError(f"items[{item.get('id')!r}].embedding: expected one vector")
    return {"id": item["id"], "embedding": embedding[0], "metadata": item.get("metadata")}


def search_call(
    queries: VectorsLike,
    k: int | None = None,
    method: Method | None = None,
    invgc: bool | None = None,
    offset: int = 0,
    score_threshold: float | None = None,
) -> Call[SearchResponse]:
    body = {"queries": _matrix(queries, "queries"), "k": k, "method": method, "offset": offset}
    body |= {"invgc": invgc, "score_threshold": score_threshold}
    return Call(
        "POST", "/search", SearchResponse, body={k: v for k, v in body.items() if v is not None}
    )


def upsert_call(items: Iterable[GalleryItemIn | Mapping[str, Any]]) -> Call[ChangeResponse]:
    return Call("PUT", "/gallery", ChangeResponse, body={"items": [_item(i) for i in items]})


def delete_call(ids: str | Sequence[str]) -> Call[ChangeResponse]:
    ids = [ids] if isinstance(ids, str) else list(ids)
    return Call("POST", "/gallery/delete", ChangeResponse, body={"ids": ids})


def get_item_call(item_id: str, embedding: bool = False) -> Call[GalleryItemDetail]:
    path = f"/gallery/{quote(item_id, safe='')}"
    return Call("GET", path, GalleryItemDetail, params={"embedding": str(embedding).lower()})


def list_gallery_call(offset: int = 0, limit: int = 100) -> Call[GalleryPage]:
    return Call("GET", "/gallery", GalleryPage, params={"offset": offset, "limit": limit})


def diagnostics_call(k: int | None = None) -> Call[DiagnosticsResponse]:
    return Call("GET", "/diagnostics", DiagnosticsResponse, params={"k": k})


def probes_call(
    queries: VectorsLike,
    truth_ids: Sequence[str] | None = None,
    k: int | None = None,
    methods: Sequence[Method] | None = None,
) -> Call[DiagnosticsResponse]:
    body = {
        "queries": _matrix(queries, "queries"),
        "truth_ids": list(truth_ids) if truth_ids is not None else None,
        "k": k,
        "methods": list(methods) if methods is not None else None,
    }
    body = {key: v for key, v in body.items() if v is not None}
    return Call("POST", "/diagnostics", DiagnosticsResponse, body=body)


HEALTH = Call("GET", "/healthz", Health)
READY = Call("GET", "/readyz", Readiness, accept=(200, 503))


class _ReadyWait:
    """The decision part of ``wait_ready``, shared by both clients."""

    def __init__(self, timeout: float, interval: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout, self.interval = timeout, interval

    def outcome(self, result: Readiness | HublessConnectionError) -> Readiness | None:
        """The readiness once ready; None to poll again; raises if failed or out of time."""
        if isinstance(result, Readiness):
            if result.status == "ready":
                return result
            if result.status == "failed":
                raise NotReadyError(503, "failed", f"startup failed: {result.detail}")
            last = result.detail or result.status
        else:
            last = str(result)
        if time.monotonic() >= self.deadline:
            raise NotReadyError(503, "not_ready", f"not ready after {self.timeout:g} s ({last})")
        return None


# --- clients --------------------------------------------------------------------------------


class _Config:
    """What both clients share: the base URL and the headers (API key, user agent)."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        http: httpx.Client | httpx.AsyncClient | None,
    ) -> None:
        if base_url is None:
            base_url = (
                str(http.base_url) if http is not None and str(http.base_url) else DEFAULT_URL
            )
        self.base_url = base_url.rstrip("/")
        self.headers = {"user-agent": f"hubless-client/{__version__}", "accept": "application/json"}
        if api_key is not None:
            self.headers["authorization"] = f"Bearer {api_key}"

    def connection_error(
        self, call: Call[Any], exc: httpx.TransportError
    ) -> HublessConnectionError:
        return HublessConnectionError(
            f"{call.method} {self.base_url}{call.path} failed: {type(exc).__name__}: {exc}"
        )


class HublessClient:
    """Synchronous client. ``http_client``: an existing ``httpx.Client`` to send through (for
    example FastAPI's ``TestClient``); it is not closed by :meth:`close`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._config = _Config(base_url, api_key, http_client)
        self._owned = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)

    def send(self, call: Call[Model]) -> Model:
        """Send one :class:`Call` and parse its response."""
        try:
            response = self._http.request(
                **call.request(self._config.base_url, self._config.headers)
            )
        except httpx.TransportError as exc:
            raise self._config.connection_error(call, exc) from exc
        return call.parse(response)

    def search(
        self,
        queries: VectorsLike,
        *,
        k: int | None = None,
        method: Method | None = None,
        invgc: bool | None = None,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> SearchResponse:
        """Top-k gallery items per query (one 1-D vector is one query); unset options take
        the service's defaults (k 10, HUBLESS_DEFAULT_METHOD, HUBLESS_INVGC)."""
        return self.send(search_call(queries, k, method, invgc, offset, score_threshold))

    def upsert(self, items: Iterable[GalleryItemIn | Mapping[str, Any]]) -> ChangeResponse:
        """Insert or replace items (mappings with ``id``, ``embedding``, optional ``metadata``)."""
        return self.send(upsert_call(items))

    def delete(self, ids: str | Sequence[str]) -> ChangeResponse:
        """Delete one id or several (all must exist, or nothing is deleted)."""
        return self.send(delete_call(ids))

    def get_item(self, item_id: str, embedding: bool = False) -> GalleryItemDetail:
        return self.send(get_item_call(item_id, embedding))

    def list_gallery(self, offset: int = 0, limit: int = 100) -> GalleryPage:
        return self.send(list_gallery_call(offset, limit))

    def diagnostics(self, k: int | None = None) -> DiagnosticsResponse:
        return self.send(diagnostics_call(k))

    def diagnostics_with_probes(
        self,
        queries: VectorsLike,
        *,
        truth_ids: Sequence[str] | None = None,
        k: int | None = None,
        methods: Sequence[Method] | None = None,
    ) -> DiagnosticsResponse:
        """Hubness (and with ``truth_ids`` R@k, ranks, MRR) for your own probe queries."""
        return self.send(probes_call(queries, truth_ids, k, methods))

    def health(self) -> Health:
        return self.send(HEALTH)

    def ready(self) -> Readiness:
        """Readiness, also while starting (status 'starting' / 'failed', no exception)."""
        return self.send(READY)

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> Readiness:
        """Poll ``/readyz`` until ready; :class:`NotReadyError` if it fails or times out."""
        wait = _ReadyWait(timeout, interval)
        while True:
            try:
                result: Readiness | HublessConnectionError = self.ready()
            except HublessConnectionError as exc:
                result = exc
            if (ready := wait.outcome(result)) is not None:
                return ready
            time.sleep(interval)

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncHublessClient:
    """Asynchronous client with the same methods as :class:`HublessClient`, awaited.
    ``http_client``: an existing ``httpx.AsyncClient`` (e.g. over ``httpx.ASGITransport``)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._config = _Config(base_url, api_key, http_client)
        self._owned = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)

    async def send(self, call: Call[Model]) -> Model:
        """Send one :class:`Call` and parse its response."""
        try:
            response = await self._http.request(
                **call.request(self._config.base_url, self._config.headers)
            )
        except httpx.TransportError as exc:
            raise self._config.connection_error(call, exc) from exc
        return call.parse(response)

    async def search(
        self,
        queries: VectorsLike,
        *,
        k: int | None = None,
        method: Method | None = None,
        invgc: bool | None = None,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> SearchResponse:
        return await self.send(search_call(queries, k, method, invgc, offset, score_threshold))

    async def upsert(self, items: Iterable[GalleryItemIn | Mapping[str, Any]]) -> ChangeResponse:
        return await self.send(upsert_call(items))

    async def delete(self, ids: str | Sequence[str]) -> ChangeResponse:
        return await self.send(delete_call(ids))

    async def get_item(self, item_id: str, embedding: bool = False) -> GalleryItemDetail:
        return await self.send(get_item_call(item_id, embedding))

    async def list_gallery(self, offset: int = 0, limit: int = 100) -> GalleryPage:
        return await self.send(list_gallery_call(offset, limit))

    async def diagnostics(self, k: int | None = None) -> DiagnosticsResponse:
        return await self.send(diagnostics_call(k))

    async def diagnostics_with_probes(
        self,
        queries: VectorsLike,
        *,
        truth_ids: Sequence[str] | None = None,
        k: int | None = None,
        methods: Sequence[Method] | None = None,
    ) -> DiagnosticsResponse:
        return await self.send(probes_call(queries, truth_ids, k, methods))

    async def health(self) -> Health:
        return await self.send(HEALTH)

    async def ready(self) -> Readiness:
        return await self.send(READY)

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> Readiness:
        wait = _ReadyWait(timeout, interval)
        while True:
            try:
                result: Readiness | HublessConnectionError = await self.ready()
            except HublessConnectionError as exc:
                result = exc
            if (ready := wait.outcome(result)) is not None:
                return ready
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
