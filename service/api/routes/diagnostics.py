"""/diagnostics: hubness and degeneration of the served gallery, before and after."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.algorithms import METHODS, InputError
from service.api.convert import text_embeddings, to_embeddings
from service.api.errors import error_responses
from service.api.jsonio import OrjsonRoute
from service.api.limits import check_hits
from service.api.models import DiagnosticsRequest, DiagnosticsResponse, checked_vectors
from service.api.runtime import EngineDep, Runtime, RuntimeDep, require_read
from service.engine import Diagnostics, Engine, diagnose, probe_sample
from service.engine.diagnostics import Hub

router = APIRouter(
    prefix="/diagnostics",
    tags=["diagnostics"],
    dependencies=[Depends(require_read)],
    route_class=OrjsonRoute,
)
ERRORS = error_responses(400, 401, 404, 413, 422, 503)


def _hub(hub: Hub) -> dict:
    return {"id": hub.id, "occurrence": hub.occurrence, "z": hub.z, "metadata": hub.metadata}


def _out(diag: Diagnostics, runtime: Runtime) -> dict:
    return {
        "live_query_bank": runtime.live_bank_status(),
        "version": diag.version,
        "gallery_size": diag.gallery_size,
        "probe_source": diag.probe_source,
        "bank_sizes": dict(zip(("query_bank", "gallery_bank"), diag.bank_sizes, strict=True)),
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
                "occurrence_histogram": dict(zip(("edges", "counts"), m.histogram, strict=True)),
                "top_hubs": {**asdict(m.hub_scale), "items": [_hub(h) for h in m.hubs]},
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
        runtime.metrics.hub_max_z.labels(m.method, str(m.invgc).lower()).set(m.max_z)


@router.get("", response_model=DiagnosticsResponse, responses=ERRORS)
async def diagnostics(
    engine: EngineDep,
    runtime: RuntimeDep,
    k: Annotated[int | None, Query(ge=1, description="Neighbourhood size (default 10)")] = None,
) -> dict:
    """Every method on the original and the InvGC gallery, probed by (a sample of) the query
    bank. Cached per k until the gallery changes; identical requests share one computation.
    Query-bank probes flatter the query-bank methods; POST held-out probes for unbiased
    figures."""
    settings = runtime.settings
    k = _checked_k(k, runtime)
    probes = min(settings.diagnostics_probes, engine.banks.query_bank.shape[0])
    if not probes:
        message = (
            "the live query bank has no rows yet, so there are no probes: "
            "POST /diagnostics with your own queries"
        )
        raise InputError("query_bank", message)
    check_hits(probes, k, settings, what="probes (HUBLESS_DIAGNOSTICS_PROBES)")
    version, live = engine.version, runtime.live_bank_status()

    def compute() -> Diagnostics:
        return diagnose(
            engine,
            probe_sample(engine.banks.query_bank, settings.diagnostics_probes),
            k=k,
            probe_source="query_bank",
            degeneration_sample=settings.degeneration_sample,
            hub_limit=settings.diagnostics_top_hubs,
        )

    # keyed by the gallery version (first, see Runtime.diagnostics), the bank's and k
    key = (version, live["version"] if live else 0, k)
    diag = await runtime.diagnostics(key, compute)
    _publish(runtime, diag)  # the gauges follow the figures last served, cached or not
    return _out(diag, runtime)


@router.post("", response_model=DiagnosticsResponse, responses=ERRORS)
async def diagnostics_with_probes(
    body: DiagnosticsRequest, engine: EngineDep, runtime: RuntimeDep
) -> dict:
    """The same figures for the caller's own probe queries; with ``truth_ids`` also R@k,
    median/mean rank and MRR."""
    k = _checked_k(body.k, runtime)
    given = body.texts if body.texts is not None else body.queries
    count = len(given) if isinstance(given, list) else 1
    check_hits(count, k, runtime.settings, what="probes")
    return await runtime.heavy.run(_diagnose_probes, body, k, engine, runtime)


def _diagnose_probes(body: DiagnosticsRequest, k: int, engine: Engine, runtime: Runtime) -> dict:
    settings = runtime.settings
    if body.texts is not None:
        probes = text_embeddings(
            body.texts, encoder=settings.encoder, dim=engine.dim, limit=settings.max_queries
        )
    else:
        rows = checked_vectors(body.queries, "queries")
        probes = to_embeddings(rows, field="queries", dim=engine.dim, limit=settings.max_queries)
    if body.truth_ids is not None and len(body.truth_ids) != probes.shape[0]:
        expected = f"expected {probes.shape[0]} ids (one per query), got {len(body.truth_ids)}"
        raise InputError("truth_ids", expected)
    diag = diagnose(
        engine,
        probes,
        k=k,
        probe_source="request",
        degeneration_sample=settings.degeneration_sample,
        truth_ids=body.truth_ids,
        methods=tuple(body.methods) if body.methods else METHODS,
        hub_limit=settings.diagnostics_top_hubs,
    )
    return _out(diag, runtime)
