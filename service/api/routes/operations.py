"""Liveness, readiness, Prometheus metrics and compaction."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.errors import ApiError, error_responses
from service.api.models import Health, LiveQueryBankOut, Readiness
from service.api.runtime import (
    EngineDep,
    RuntimeDep,
    check_key,
    no_unknown_query,
    require_read,
    require_write,
)

router = APIRouter(tags=["operations"])


# The probes are ``async`` and do no blocking work: they run on the event loop itself, so a
# saturated thread pool (heavy searches, diagnostics, writes) never delays them.


@router.get("/healthz", response_model=Health, dependencies=[Depends(no_unknown_query)])
async def healthz() -> dict:
    """200 while the process lives (liveness)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Starting or failed"}},
    dependencies=[Depends(no_unknown_query)],
)
async def readyz(runtime: RuntimeDep, request: Request, response: Response) -> dict:
    """200 once the gallery is loaded and precomputed; 503 before (or if startup failed).
    Open to all; with HUBLESS_AUTH_READS only a caller with the key gets the details."""
    if runtime.engine is None:
        response.status_code = 503
    if runtime.settings.auth_reads:
        try:
            check_key(request, runtime.settings)
        except ApiError:
            return {"status": runtime.status}
    if runtime.engine is None:
        return {"status": runtime.status, "detail": runtime.error}
    engine = runtime.engine
    return {"status": "ready", "gallery_size": engine.size, "version": engine.version}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
    dependencies=[Depends(require_read)],
)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus metrics in the text exposition format."""
    runtime.record_state()
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/admin/snapshot",
    response_model=Readiness,
    responses=error_responses(401, 403, 503, 507),
    dependencies=[Depends(require_write)],
)
def snapshot(engine: EngineDep) -> dict:
    """Compact the change log into a snapshot of the current gallery (faster restarts)."""
    version = engine.compact()
    return {"status": "ready", "gallery_size": engine.size, "version": version}


@router.post(
    "/admin/query-bank/refresh",
    response_model=LiveQueryBankOut,
    responses=error_responses(401, 403, 409, 503),
    dependencies=[Depends(require_write)],
)
def refresh_query_bank(engine: EngineDep, runtime: RuntimeDep) -> dict:
    """Apply the live query bank's pending rows now (the background refresh does it too):
    afterwards every method equals a fresh start with the extended bank."""
    if engine.live_bank is None:
        message = "the live query bank is off (set HUBLESS_LIVE_QUERY_BANK=true)"
        raise ApiError(409, "live_query_bank_off", message)
    status = engine.live_bank.refresh(engine).as_dict()
    runtime.record_state()
    return status
