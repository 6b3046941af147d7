"""What the routes receive: the runtime (settings, metrics, engine once ready) and auth checks."""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, Request

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
    closed: bool = False
    diagnostics_lock: threading.Lock = field(default_factory=threading.Lock)
    #: keyed by (gallery version, live query bank version, k)
    diagnostics_cache: dict[tuple[int, int, int], Diagnostics] = field(default_factory=dict)

    def record_state(self) -> None:
        if self.engine is not None:
            state = self.engine.state
            self.metrics.gallery_size.set(state.size)
            self.metrics.gallery_version.set(state.version)
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


def require_write(request: Request, runtime: RuntimeDep) -> None:
    """Writes need the API key whenever one is configured, and a replica that may write."""
    _check_key(request, runtime)
    if runtime.settings.read_only:
        message = (
            "this replica is read-only (HUBLESS_MILVUS_READ_ONLY=true): "
            "send gallery changes to the writer replica"
        )
        raise ApiError(403, "read_only", message)


def require_read(request: Request, runtime: RuntimeDep) -> None:
    """Reads need it only with ``HUBLESS_AUTH_READS=true``."""
    if runtime.settings.auth_reads:
        _check_key(request, runtime)
