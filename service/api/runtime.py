"""What the routes receive: the runtime (settings, metrics, engine once ready) and auth checks."""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.api.metrics import Metrics
from service.engine import Diagnostics, Engine
from service.settings import Settings

Status = Literal["starting", "ready", "failed"]


@dataclass
class Runtime:
    """The app's mutable shell around the engine: readiness and the diagnostics cache."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    status: Status = "starting"
    error: str | None = None
    diagnostics_lock: threading.Lock = field(default_factory=threading.Lock)
    diagnostics_cache: dict[tuple[int, int], Diagnostics] = field(default_factory=dict)

    def record_state(self) -> None:
        if self.engine is not None:
            state = self.engine.state
            self.metrics.gallery_size.set(state.size)
            self.metrics.gallery_version.set(state.version)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_engine(runtime: RuntimeDep) -> Engine:
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


def _check_key(request: Request, runtime: Runtime) -> None:
    expected = runtime.settings.api_key
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


# Declared for OpenAPI only (the "Authorize" button of /docs): _check_key reads the headers
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


def require_write(
    request: Request, runtime: RuntimeDep, _bearer: BearerKey = None, _header: HeaderKey = None
) -> None:
    """Writes need the API key whenever one is configured, and a replica that may write."""
    _check_key(request, runtime)
    if runtime.settings.read_only:
        message = (
            "this replica is read-only (HUBLESS_MILVUS_READ_ONLY=true): "
            "send gallery changes to the writer replica"
        )
        raise ApiError(403, "read_only", message)
    reject_unknown_query(request)


def require_read(
    request: Request, runtime: RuntimeDep, _bearer: BearerKey = None, _header: HeaderKey = None
) -> None:
    """Reads need it only with ``HUBLESS_AUTH_READS=true``."""
    if runtime.settings.auth_reads:
        _check_key(request, runtime)
    reject_unknown_query(request)
