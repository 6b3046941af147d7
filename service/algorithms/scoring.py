"""Exact scoring of queries against a prepared gallery view, blocked over the gallery.

A :class:`GalleryView` is everything a query needs from one gallery variant (original or
InvGC-adjusted): its embeddings, the four stat columns, and the activation flags. Scores are
``w·(Q Gᵀ) + C statᵀ`` computed one gallery block at a time, so memory is bounded by
``m × block`` whatever the gallery size.
"""

from __future__ import annotations

import numpy as np

from service.algorithms.blocks import (
    CHUNK_BYTES,
    DEFAULT_BLOCK_BYTES,
    WIDEN_BYTES,
    block_rows,
    merge_topk,
    parallel_map,
    product_with,
    row_blocks,
    topk_desc,
    work_dtype,
)
from service.algorithms.normalisers import Normaliser, QueryPlan
from service.algorithms.planning import plan_for
from service.algorithms.stats import NormParams
from service.algorithms.views import GalleryView


def gallery_block_rows(embeddings: np.ndarray, m: int, budget: int = DEFAULT_BLOCK_BYTES) -> int:
    """Gallery rows per block for ``m`` queries: ``budget`` bytes of scores, and a float16
    gallery's block at most :data:`WIDEN_BYTES` once widened to float32 (one query would
    otherwise widen the whole gallery at once: 1.5 GB at 1M × 384, and seconds per query)."""
    work = work_dtype(embeddings.dtype)
    rows = block_rows(max(m, 1), work.itemsize, budget)
    if work != embeddings.dtype:
        rows = min(rows, block_rows(embeddings.shape[1], work.itemsize, WIDEN_BYTES))
    return rows


def search_block_rows(view: GalleryView, m: int) -> int:
    """Gallery rows per block when scoring ``m`` queries (a 32 MiB block of scores)."""
    return gallery_block_rows(view.embeddings, m, budget=32 << 20)


def top1_raw(
    queries: np.ndarray, embeddings: np.ndarray, live: np.ndarray | None = None
) -> np.ndarray:
    """(m,) row of each query's most similar gallery item by raw cosine (blocked), among the
    ``live`` rows (n,) bool if given (a view's :attr:`~GalleryView.live`)."""
    m = queries.shape[0]
    best = np.full(m, -np.inf)
    arg = np.zeros(m, np.int64)
    for sl in row_blocks(embeddings.shape[0], gallery_block_rows(embeddings, m)):
        sims = product_with(queries, embeddings[sl])
        if live is not None:
            sims[:, ~live[sl]] = -np.inf
        blk_arg = sims.argmax(axis=1)
        blk_best = sims[np.arange(m), blk_arg]
        better = blk_best > best
        best[better], arg[better] = blk_best[better], blk_arg[better] + sl.start
    return arg


def plan_queries(
    normaliser: Normaliser, queries: np.ndarray, view: GalleryView, params: NormParams
) -> QueryPlan:
    """The query plan on an in-memory view (the raw top-1 pass by :func:`top1_raw`)."""
    return plan_for(
        normaliser,
        params,
        view,
        queries.shape[0],
        lambda: top1_raw(queries, view.embeddings, view.live),
    )


def score_block(queries: np.ndarray, view: GalleryView, plan: QueryPlan, rows: slice) -> np.ndarray:
    """(m, B) ranking scores (without the per-query offsets) of the gallery rows ``rows``."""
    dtype = work_dtype(view.embeddings.dtype)
    scores = product_with(queries, view.embeddings[rows])
    if plan.weight != 1.0:
        scores *= plan.weight
    if np.any(plan.coefficients):
        scores += plan.coefficients.astype(dtype) @ view.stats[rows].T
    return scores


def search(
    queries: np.ndarray,
    view: GalleryView,
    plan: QueryPlan,
    k: int,
    *,
    similarities: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k: (m, k') row indices and reported scores (float64, offsets included).

    ``allowed``: (n,) bool, the rows a filter lets through; the others are masked out of each
    block's scores (-inf) before its top-k, so the result is the full ranking restricted to
    the allowed rows, without an (m, n) array. k' ≤ the number of allowed rows.

    ``similarities``: ``queries @ view.embeddingsᵀ`` (m, n) if the caller already has it (the
    dynamic methods' top-1 pass over a gallery that fits one block); it is overwritten.
    The bias ``C statᵀ`` is computed once per distinct coefficient row (one for the static
    methods, at most four for the dynamic ones) and added, with the weight, inside the same
    cache-sized row chunks that the top-k partitions on the block threads: no extra pass.
    """
    m = queries.shape[0]
    allowed = view.live_mask(allowed)  # dead rows (tombstones) are never found
    if allowed is not None:
        k = min(k, int(np.count_nonzero(allowed)))  # never a masked row among the k best
    patterns, pattern_of = np.unique(plan.coefficients, axis=0, return_inverse=True)
    biased = bool(np.any(patterns))
    idx = np.empty((m, 0), np.int64)
    val = np.empty((m, 0), work_dtype(view.embeddings.dtype))
    for sl in row_blocks(view.size, search_block_rows(view, m)):
        if similarities is not None and sl == slice(0, view.size):
            sims = similarities
        else:
            sims = product_with(queries, view.embeddings[sl])
        bias = patterns.astype(sims.dtype) @ view.stats[sl].T if biased else None
        mask = None if allowed is None else allowed[sl]
        blk_idx, blk_val = _block_topk(sims, plan.weight, bias, pattern_of.ravel(), k, mask)
        idx, val = merge_topk(idx, val, blk_idx + sl.start, blk_val, k)
    return idx, val.astype(np.float64) + plan.offsets[:, None]


def _block_topk(
    sims: np.ndarray,
    weight: float,
    bias: np.ndarray | None,
    pattern_of: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``weight·sims + bias[pattern_of]`` per row, over the ``allowed`` columns (all
    if None; the others score -inf); ``sims`` (m, B) is overwritten."""
    chunk = block_rows(sims.shape[1], sims.dtype.itemsize, CHUNK_BYTES)
    masked = None if allowed is None or allowed.all() else ~allowed

    def run(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        part = sims[rows]
        if weight != 1.0:
            part *= weight
        if bias is not None and len(bias) == 1:
            part += bias[0]  # broadcast: no (rows, B) gather
        elif bias is not None:
            for row, pattern in zip(part, pattern_of[rows], strict=True):  # few rows per chunk
                row += bias[pattern]
        if masked is not None:
            part[:, masked] = -np.inf
        return topk_desc(part, k)

    results = parallel_map(run, row_blocks(sims.shape[0], chunk))
    if not results:  # no queries
        return topk_desc(sims, k)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def dense_scores(queries: np.ndarray, view: GalleryView, plan: QueryPlan) -> np.ndarray:
    """(m, n) reported scores; for small galleries and tests."""
    return score_block(queries, view, plan, slice(None)).astype(np.float64) + plan.offsets[:, None]


def ranks_of(
    queries: np.ndarray, view: GalleryView, plan: QueryPlan, truth: np.ndarray
) -> np.ndarray:
    """(m,) 1-based rank of gallery row ``truth[i]`` for query i: 1 + #items scoring higher.

    "Higher" compares values of the same blocked product: an exact duplicate of the true item
    has bitwise the same score there, whereas a separately computed true score (einsum) can
    differ by an ulp. The einsum estimate only splits each block into "clearly higher" (counted
    at once) and a narrow band around it (kept, and compared at the end with the true item's
    score taken from its own block).
    """
    m = queries.shape[0]
    dtype = work_dtype(view.embeddings.dtype)  # what score_block computes in
    estimate, magnitude = np.empty(m, np.float64), np.empty(m, np.float64)
    for i in range(0, m, 4096):  # the true items' own scores, one small product per chunk
        sl = slice(i, min(m, i + 4096))
        bias = plan.coefficients[sl] * view.stats[truth[sl]]
        estimate[sl] = plan.weight * np.einsum(
            "ij,ij->i", queries[sl], view.embeddings[truth[sl]]
        ) + bias.sum(axis=1)
        magnitude[sl] = abs(plan.weight) + np.abs(bias).sum(axis=1)
    # twice the worst-case rounding error of a (d + #stat columns)-term float sum of unit-vector
    # products
    # (Σ|q_i g_i| ≤ 1), so the band always holds the true item's score and its exact duplicates
    tol = 2 * (view.embeddings.shape[1] + 8) * np.finfo(dtype).eps * (magnitude + np.abs(estimate))
    above = (estimate + tol).astype(dtype)[:, None]
    below = (estimate - tol).astype(dtype)[:, None]
    rows = np.arange(m)
    higher = np.zeros(m, np.int64)
    true_score = np.empty(m, dtype)
    band_query, band_score = [], []
    for sl in row_blocks(view.size, search_block_rows(view, m)):
        scores = score_block(queries, view, plan, sl)
        higher += (scores > above).sum(axis=1)
        q, col = np.nonzero((scores >= below) & (scores <= above))
        band_query.append(q)
        band_score.append(scores[q, col])
        in_block = (truth >= sl.start) & (truth < sl.stop)
        true_score[in_block] = scores[rows[in_block], truth[in_block] - sl.start]
    q, score = np.concatenate(band_query), np.concatenate(band_score)
    higher += np.bincount(q[score > true_score[q]], minlength=m)
    return higher + 1
