"""What the routes receive: the runtime (settings, metrics, engine once ready), the bounded pool
of heavy work, and auth checks.

Searches and diagnostics run in their own bounded pool (``HUBLESS_HEAVY_CONCURRENCY`` threads,
at most ``HUBLESS_HEAVY_QUEUE`` waiting, beyond that 503 + Retry-After), never in the thread
pool every other route shares, and the dependencies below are ``async`` (no thread at all): so
however much heavy work arrives, ``/healthz`` and ``/readyz`` answer at once.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.api.metrics import Metrics
from service.engine import Diagnostics, Engine
from service.settings import Settings

Status = Literal["starting", "ready", "failed"]
T = TypeVar("T")

#: Paths open without the key even with HUBLESS_AUTH_READS: the kubelet's probes send none
#: (/readyz then says only whether the service is ready, nothing about the gallery), and the
#: diagnostics page and its static assets hold no data (the page asks for the key itself).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/ui"})
PUBLIC_PREFIXES = ("/ui/",)


def is_public(path: str) -> bool:
    """Whether ``path`` is served without the key even with HUBLESS_AUTH_READS."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


#: GET /diagnostics results kept (distinct k; entries of older gallery versions are dropped).
DIAGNOSTICS_CACHE_SIZE = 16


class HeavyPool:
    """A bounded pool for CPU-heavy requests: ``concurrency`` at once, ``queue`` waiting."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self.concurrency, self.queue = concurrency, queue
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        stats = self._limiter.statistics()
        if stats.borrowed_tokens >= self.concurrency and stats.tasks_waiting >= self.queue:
            message = (
                f"busy: {self.concurrency} searches/diagnostics running and {self.queue} waiting "
                "(HUBLESS_HEAVY_CONCURRENCY, HUBLESS_HEAVY_QUEUE); retry shortly"
            )
            raise ApiError(503, "overloaded", message, headers={"Retry-After": "1"})
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)


@dataclass
class Runtime:
    """The app's mutable shell around the engine: readiness, the heavy pool and the
    diagnostics cache (touched only from the event loop, so it needs no lock)."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    status: Status = "starting"
    error: str | None = None
    closed: bool = False
    heavy: HeavyPool = field(init=False)
    #: plain vector searches: threads that mostly wait in the coalescer (service/api/coalesce.py
    #: bounds the searches that run), as many as the heavy pool's slots and queue together
    coalesced: HeavyPool = field(init=False)
    diagnostics_cache: OrderedDict[Hashable, Diagnostics] = field(default_factory=OrderedDict)
    _inflight: dict[Hashable, asyncio.Future[Diagnostics]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.heavy = HeavyPool(self.settings.heavy_concurrency, self.settings.heavy_queue)
        self.coalesced = HeavyPool(self.settings.heavy_concurrency + self.settings.heavy_queue, 0)

    async def diagnostics(self, key: Hashable, compute: Callable[[], Diagnostics]) -> Diagnostics:
        """Cached by ``key``, a tuple whose first item is the gallery version the result must
        be of; identical requests in flight share one computation (single flight) instead of
        each taking a worker."""
        if key in self.diagnostics_cache:
            self.diagnostics_cache.move_to_end(key)
            return self.diagnostics_cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self.heavy.run(compute))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(task)

    def _finished(self, key: Hashable, task: asyncio.Future[Diagnostics]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return
        diag = task.result()
        if key[0] != diag.version:  # type: ignore[index]  # the gallery changed meanwhile
            return
        cache = self.diagnostics_cache
        for old in [k for k, d in cache.items() if d.version != diag.version]:
            del cache[old]
        cache[key] = diag
        while len(cache) > DIAGNOSTICS_CACHE_SIZE:
            cache.popitem(last=False)

    def record_state(self) -> None:
        if self.engine is not None:
            self.metrics.gallery_size.set(self.engine.size)
            self.metrics.gallery_version.set(self.engine.version)
            live = self.live_bank_status()
            if live is not None:
                self.metrics.query_bank_size.set(live["size"])
                self.metrics.query_bank_pending.set(live["pending"])

    def live_bank_status(self) -> dict[str, int] | None:
        """``{"size", "pending", "version"}`` of the live query bank; None when it is off."""
        live = self.engine.live_bank if self.engine is not None else None
        return live.status().as_dict() if live is not None else None

    def close(self) -> None:
        """At shutdown: stop the live bank's thread and commit its pending rows."""
        self.closed = True
        if self.engine is not None and self.engine.live_bank is not None:
            self.engine.live_bank.close()
        close = getattr(self.engine, "close", None)  # the remote engine: lease, follower
        if close is not None:
            close()


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_engine(runtime: RuntimeDep) -> Engine:
    """The engine, or 503 while the startup precompute runs (never half-built state)."""
    if runtime.engine is None:
        detail = runtime.error if runtime.status == "failed" else "precompute in progress"
        raise ApiError(
            503, "not_ready", f"service not ready: {detail}", headers={"Retry-After": "5"}
        )
    return runtime.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_query(request: Request) -> None:
    """Unknown query parameters are errors, as unknown body fields are: ``?limt=5`` must not
    silently serve the default limit. Checked after the API key (require_read/require_write
    end with it): a client without the key learns nothing about a route's parameters."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    unknown = sorted(set(request.query_params) - _query_names(dependant))
    if unknown:
        known = sorted(_query_names(dependant))
        message = f"unknown query parameter(s) {unknown}; this route takes {known or 'none'}"
        raise ApiError(422, "invalid_request", message, field=unknown[0])


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def check_key(request: Request, settings: Settings) -> None:
    """401 unless the request presents the API key (when one is configured)."""
    expected = settings.api_key
    if expected is None:
        return
    presented = _presented_key(request)
    if not presented:  # an empty key must never match (not even a configured empty key)
        message = "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
        raise ApiError(
            401, "unauthorized", "invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )


# Declared for OpenAPI only (the "Authorize" button of /docs): check_key reads the headers
# itself, so these never raise (auto_error=False) and add no logic of their own.
_WHEN = "gallery writes and /admin/snapshot; reads too with HUBLESS_AUTH_READS=true"
BearerKey = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, description=f"The API key, for {_WHEN}")),
]
HeaderKey = Annotated[
    str | None,
    Depends(
        APIKeyHeader(name="X-API-Key", auto_error=False, description=f"The API key, for {_WHEN}")
    ),
]


async def require_write(
    request: Request, runtime: RuntimeDep, _bearer: BearerKey = None, _header: HeaderKey = None
) -> None:
    """Writes need the API key whenever one is configured, and a replica that may write."""
    check_key(request, runtime.settings)
    if runtime.settings.read_only:
        message = (
            "this replica is read-only (HUBLESS_MILVUS_READ_ONLY=true): "
            "send gallery changes to the writer replica"
        )
        raise ApiError(403, "read_only", message)
    reject_unknown_query(request)


async def require_read(
    request: Request, runtime: RuntimeDep, _bearer: BearerKey = None, _header: HeaderKey = None
) -> None:
    """Reads need it only with ``HUBLESS_AUTH_READS=true`` (which
    :class:`~service.api.middleware.ReadAuthMiddleware` applies to every path but the
    :func:`is_public` ones, the docs and /metrics included)."""
    if runtime.settings.auth_reads:
        check_key(request, runtime.settings)
    reject_unknown_query(request)


async def no_unknown_query(request: Request) -> None:
    """:func:`reject_unknown_query` as a dependency of the probes: ``async``, so it runs on the
    event loop and a saturated thread pool cannot delay them."""
    reject_unknown_query(request)
