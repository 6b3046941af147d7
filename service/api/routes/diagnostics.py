"""/diagnostics: hubness and degeneration of the served gallery, before and after."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.algorithms import METHODS, InputError
from service.api.convert import to_embeddings
from service.api.errors import error_responses
from service.api.jsonio import OrjsonRoute
from service.api.models import DiagnosticsRequest, DiagnosticsResponse
from service.api.runtime import EngineDep, Runtime, RuntimeDep, require_read
from service.engine import Diagnostics, diagnose, probe_sample

router = APIRouter(
    prefix="/diagnostics",
    tags=["diagnostics"],
    dependencies=[Depends(require_read)],
    route_class=OrjsonRoute,
)
ERRORS = error_responses(400, 401, 404, 413, 422, 503)


def _out(diag: Diagnostics, runtime: Runtime) -> dict:
    return {
        "live_query_bank": runtime.live_bank_status(),
        "version": diag.version,
        "gallery_size": diag.gallery_size,
        "probe_source": diag.probe_source,
        "degeneration": [
            {"invgc": invgc, "value": d.value, "items": d.items, "gallery_size": d.gallery_size}
            for invgc, d in diag.degeneration.items()
        ],
        "methods": [
            {
                "method": m.method,
                "invgc": m.invgc,
                "hubness": m.hubness.as_dict(),
                "retrieval": m.retrieval.as_dict() if m.retrieval else None,
            }
            for m in diag.methods
        ],
    }


def _checked_k(k: int | None, runtime: Runtime) -> int:
    k = k or runtime.settings.diagnostics_k
    if k > runtime.settings.max_k:
        raise InputError("k", f"{k} exceeds the limit {runtime.settings.max_k} (HUBLESS_MAX_K)")
    return k


def _publish(runtime: Runtime, diag: Diagnostics) -> None:
    for m in diag.methods:
        gauge = runtime.metrics.k_occurrence_skewness.labels(m.method, str(m.invgc).lower())
        gauge.set(m.hubness.skewness)


@router.get("", response_model=DiagnosticsResponse, responses=ERRORS)
def diagnostics(
    engine: EngineDep,
    runtime: RuntimeDep,
    k: Annotated[int | None, Query(ge=1, description="Neighbourhood size (default 10)")] = None,
) -> dict:
    """Every method on the original and the InvGC gallery, probed by (a sample of) the query
    bank. Cached until the gallery changes. Query-bank probes flatter the query-bank methods;
    POST held-out probes for unbiased figures."""
    settings = runtime.settings
    k = _checked_k(k, runtime)
    with runtime.diagnostics_lock:  # one computation per gallery version, not one per caller
        live = runtime.live_bank_status()
        key = (engine.state.version, live["version"] if live else 0, k)
        diag = runtime.diagnostics_cache.get(key)
        if diag is None:
            probes = probe_sample(engine.banks.query_bank, settings.diagnostics_probes)
            if not probes.shape[0]:
                message = (
                    "the live query bank has no rows yet, so there are no probes: "
                    "POST /diagnostics with your own queries"
                )
                raise InputError("query_bank", message)
            diag = diagnose(
                engine,
                probes,
                k=k,
                probe_source="query_bank",
                degeneration_sample=settings.degeneration_sample,
            )
            runtime.diagnostics_cache.clear()
            runtime.diagnostics_cache[key] = diag
            _publish(runtime, diag)
    return _out(diag, runtime)


@router.post("", response_model=DiagnosticsResponse, responses=ERRORS)
def diagnostics_with_probes(
    body: DiagnosticsRequest, engine: EngineDep, runtime: RuntimeDep
) -> dict:
    """The same figures for the caller's own probe queries; with ``truth_ids`` also R@k,
    median/mean rank and MRR."""
    settings = runtime.settings
    probes = to_embeddings(
        body.queries, field="queries", dim=engine.dim, limit=settings.max_queries
    )
    if body.truth_ids is not None and len(body.truth_ids) != probes.shape[0]:
        expected = f"expected {probes.shape[0]} ids (one per query), got {len(body.truth_ids)}"
        raise InputError("truth_ids", expected)
    k = _checked_k(body.k, runtime)
    diag = diagnose(
        engine,
        probes,
        k=k,
        probe_source="request",
        degeneration_sample=settings.degeneration_sample,
        truth_ids=body.truth_ids,
        methods=tuple(body.methods) if body.methods else METHODS,
    )
    return _out(diag, runtime)
