"""GET /info: what this service is, in one cheap call (the diagnostics page polls it)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service import __version__
from service.algorithms import METHODS
from service.api.errors import error_responses
from service.api.models import Info
from service.api.runtime import EngineDep, RuntimeDep, require_read

router = APIRouter(tags=["operations"], dependencies=[Depends(require_read)])


@router.get("/info", response_model=Info, responses=error_responses(401, 503))
def info(engine: EngineDep, runtime: RuntimeDep) -> dict:
    """Name, version, dimension, methods and defaults, gallery size and version.

    No computation: clients poll it and fetch ``/diagnostics`` only when ``gallery_version``
    changes."""
    settings = runtime.settings
    return {
        "name": "hubless",
        "version": __version__,
        "dim": engine.dim,
        "methods": list(METHODS),
        "default_method": settings.default_method,
        "invgc": settings.invgc,
        "gallery_size": engine.size,
        "gallery_version": engine.version,
        "encoder": settings.encoder,
        "auth_reads": settings.auth_reads,
    }
