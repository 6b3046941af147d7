"""POST /search: normalised top-k for a batch of query embeddings."""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Depends

from service.algorithms import InputError
from service.api.coalesce import COALESCER
from service.api.convert import text_embeddings, to_embeddings
from service.api.errors import error_responses
from service.api.jsonio import OrjsonResponse, OrjsonRoute
from service.api.limits import check_hits
from service.api.models import SearchRequest, SearchResponse
from service.api.runtime import EngineDep, Runtime, RuntimeDep, require_read
from service.engine import Engine, SearchResult
from service.engine.filters import compile_filter

router = APIRouter(tags=["search"], dependencies=[Depends(require_read)], route_class=OrjsonRoute)

DEFAULT_K = 10


@router.post(
    "/search",
    response_model=SearchResponse,
    response_class=OrjsonResponse,
    responses=error_responses(400, 401, 404, 413, 422, 503),
    summary="Search the gallery with hubness-aware normalisation",
)
async def search(body: SearchRequest, engine: EngineDep, runtime: RuntimeDep) -> OrjsonResponse:
    """Top-k gallery items for each query, ranked by the chosen method's normalised score.

    Scores are those of docs/spec.md (monotone in the papers' products); ``similarity`` is the raw
    cosine to the original gallery item. ``offset`` and ``score_threshold`` apply after
    normalisation. At most HUBLESS_MAX_HITS hits (queries × (k + offset)) per request.
    """
    settings = runtime.settings
    k = body.k if body.k is not None else DEFAULT_K
    if k + body.offset > settings.max_k:
        raise InputError("k", f"k + offset = {k + body.offset} exceeds the limit {settings.max_k}")
    check_hits(body.size, k + body.offset, settings)
    # plain vector searches wait for a shared search in the coalescer, not for a heavy slot
    # (waiting there for a slot, they would reach it one by one: batches of one)
    pool = runtime.coalesced if _coalesced(body) else runtime.heavy
    return await pool.run(_search, body, k, engine, runtime)


def _coalesced(body: SearchRequest) -> bool:
    """Whether the search goes through the coalescer: given vectors, no filter, no metadata
    (text queries are encoded first: heavy work of their own)."""
    plain = body.query_field not in ("query_ids", "texts")
    return plain and body.filter is None and not body.with_metadata


def _search(body: SearchRequest, k: int, engine: Engine, runtime: Runtime) -> OrjsonResponse:
    """The work of :func:`search`, in the heavy pool (response body built there too)."""
    settings = runtime.settings
    method = body.method or settings.default_method
    invgc = settings.invgc if body.invgc is None else body.invgc
    queries = query_embeddings(body, engine, runtime)
    spec = body.filter.model_dump(exclude_none=True) if body.filter is not None else None
    common = {"k": k, "method": method, "invgc": invgc, "offset": body.offset}
    common["score_threshold"] = body.score_threshold
    if queries is not None and _coalesced(body):
        # plain vector searches: concurrent ones share one pass over the gallery
        result = COALESCER.search(engine, queries, **common)
    else:
        result = engine.search(
            queries,
            **common,
            where=compile_filter(spec) if spec is not None else None,
            where_key=json.dumps(spec, sort_keys=True) if spec is not None else None,
            with_metadata=body.with_metadata,
            query_ids=body.query_ids,
        )
    runtime.metrics.search_queries.labels(method, str(invgc).lower()).inc(len(result.ids))
    if engine.live_bank is not None and queries is not None:
        # served queries join the live query bank (O(m·d) copy); searches by stored gallery
        # items (query_ids) do not: they are of the gallery's modality, not the queries'
        engine.live_bank.offer(queries)
    # the body is built to match SearchResponse (the documented schema) and serialised by
    # orjson directly: re-validating 64 × k hits through pydantic would double the cost
    return OrjsonResponse(response_body(result, method, invgc, k, body.offset))


def query_embeddings(body: SearchRequest, engine: Engine, runtime: Runtime) -> np.ndarray | None:
    """The request's query vectors: given, or embedded from texts; None for ``query_ids``
    (the engine reads the stored embeddings from the very state it searches)."""
    settings = runtime.settings
    field, limit = body.query_field, settings.max_queries
    if field == "query_ids":
        if len(body.query_ids or ()) > limit:
            raise InputError(field, f"{len(body.query_ids or ())} ids; the limit is {limit}")
        return None
    if field == "texts":
        texts = body.texts or []
        return text_embeddings(texts, encoder=settings.encoder, dim=engine.dim, limit=limit)
    return to_embeddings(body.batch(), field=field, dim=engine.dim, limit=limit)


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
    if result.metadata is not None:
        for hits, metadata in zip(results, result.metadata, strict=True):
            for hit, meta in zip(hits, metadata, strict=True):
                hit["metadata"] = meta
    return {
        "method": method,
        "invgc": invgc,
        "k": k,
        "offset": offset,
        "gallery_version": result.version,
        "results": results,
    }
