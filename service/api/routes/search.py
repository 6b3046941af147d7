"""POST /search: normalised top-k for a batch of query embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.algorithms import InputError
from service.api.coalesce import COALESCER
from service.api.convert import to_embeddings
from service.api.errors import error_responses
from service.api.jsonio import OrjsonResponse, OrjsonRoute
from service.api.models import SearchRequest, SearchResponse
from service.api.runtime import EngineDep, RuntimeDep, require_read
from service.engine import SearchResult

router = APIRouter(tags=["search"], dependencies=[Depends(require_read)], route_class=OrjsonRoute)

DEFAULT_K = 10


@router.post(
    "/search",
    response_model=SearchResponse,
    response_class=OrjsonResponse,
    responses=error_responses(400, 401, 413, 422, 503),
    summary="Search the gallery with hubness-aware normalisation",
)
def search(body: SearchRequest, engine: EngineDep, runtime: RuntimeDep) -> OrjsonResponse:
    """Top-k gallery items for each query, ranked by the chosen method's normalised score.

    Scores are those of SPEC.md (monotone in the papers' products); ``similarity`` is the raw
    cosine to the original gallery item. ``offset`` and ``score_threshold`` apply after
    normalisation.
    """
    settings = runtime.settings
    k = body.k if body.k is not None else DEFAULT_K
    if k + body.offset > settings.max_k:
        raise InputError("k", f"k + offset = {k + body.offset} exceeds the limit {settings.max_k}")
    method = body.method or settings.default_method
    invgc = settings.invgc if body.invgc is None else body.invgc
    field = "queries" if body.queries is not None else "query"
    queries = to_embeddings(body.batch(), field=field, dim=engine.dim, limit=settings.max_queries)
    result = COALESCER.search(  # concurrent searches share one pass over the gallery
        engine,
        queries,
        k=k,
        method=method,
        invgc=invgc,
        offset=body.offset,
        score_threshold=body.score_threshold,
    )
    runtime.metrics.search_queries.labels(method, str(invgc).lower()).inc(queries.shape[0])
    # the body is built to match SearchResponse (the documented schema) and serialised by
    # orjson directly: re-validating 64 × k hits through pydantic would double the cost
    return OrjsonResponse(response_body(result, method, invgc, k, body.offset))


def response_body(result: SearchResult, method: str, invgc: bool, k: int, offset: int) -> dict:
    """The :class:`SearchResponse` content of ``result`` (plain dicts, lists and floats)."""
    first = offset + 1
    results = [
        [
            {"id": i, "score": s, "similarity": c, "rank": r}
            for r, (i, s, c) in enumerate(
                zip(ids, scores.tolist(), sims.tolist(), strict=True), first
            )
        ]
        for ids, scores, sims in zip(result.ids, result.scores, result.similarities, strict=True)
    ]
    return {
        "method": method,
        "invgc": invgc,
        "k": k,
        "offset": offset,
        "gallery_version": result.version,
        "results": results,
    }
