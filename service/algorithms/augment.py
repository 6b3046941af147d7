"""The bias-augmented gallery and the matching query vectors, for any inner-product engine.

Pure numpy, so that backends (FAISS, Milvus) and the export share one definition without
importing each other.

Every method scores ``w·s(q, g) + c(q)·stat(g) + offset(q)`` (see
:mod:`service.algorithms.normalisers`), so an engine that stores, per gallery item,

    gallery_coordinates = [g, stat(g)]                       (d + 5 floats)

and is searched by inner product with

    query_coordinates   = [w·q, c(q)]                        (d + 5 floats)

ranks exactly as the service does; add :func:`score_offsets` (a per-query constant) to the
engine's inner products to get the service's reported scores.

Dynamic methods (``dis``, ``dualdis``) need one extra step per query, because ``c(q)`` depends on
whether the query's raw top-1 gallery item is in each bank's activation set:

1. search the same index with ``query_coordinates(q, "raw", params)`` (``[q, 0, 0, 0, 0]``),
   limit 1: the raw top-1 item;
2. ``activated = activation_flags(top1_ids, query_bank_ids, gallery_bank_ids)`` with the
   activation sets exported next to the gallery (``activation.json``);
3. search with ``query_coordinates(q, method, params, activated)``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from service.algorithms.normalisers import METHODS, QueryPlan, get_normaliser
from service.algorithms.stats import STAT_COLUMNS, NormParams
from service.algorithms.validation import check_embeddings
from service.algorithms.views import GalleryView

#: Width of the bias block appended to every gallery embedding.
EXTRA_DIMS = len(STAT_COLUMNS)


def gallery_coordinates(embeddings: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """(n, d+5) float32 rows ``[g, stat(g)]`` from a view's embeddings (n, d) and stats (n, 5)."""
    return np.hstack([embeddings, stats]).astype(np.float32, copy=False)


def raw_coordinates(queries: np.ndarray) -> np.ndarray:
    """``[q, 0…]``: queries whose inner product with ``[g, stat(g)]`` is the raw similarity
    (the dynamic methods' top-1 pass on an augmented index)."""
    return np.hstack([queries, np.zeros((queries.shape[0], EXTRA_DIMS), queries.dtype)])


def view_coordinates(view: GalleryView, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """:func:`gallery_coordinates` of some rows of a prepared view."""
    return gallery_coordinates(view.embeddings[rows], view.stats[rows])


def plan_coordinates(plan: QueryPlan, queries: np.ndarray) -> np.ndarray:
    """(m, d + #stat columns) augmented queries ``[w·q, c(q)]`` of a plan, for an index
    storing ``[g, stat(g)]`` (in the queries' dtype)."""
    return np.hstack([plan.weight * queries, plan.coefficients.astype(queries.dtype)])


def query_plan(
    method: str,
    params: NormParams,
    m: int,
    activated: np.ndarray | None = None,
    bank_sizes: tuple[int, int] = (1, 1),
) -> QueryPlan:
    """The plan (weight, (m, #stat columns) coefficients, (m,) offsets) of ``method`` for m
    queries.

    activated: (m, 2) bool, the raw top-1 item in (A_BQ, A_BG); dynamic methods only.
    bank_sizes: (|BQ|, |BG|), which only the offsets depend on (rankings never do).
    """
    return get_normaliser(method).plan(params, bank_sizes, m, activated)


def query_coordinates(
    queries: np.ndarray,
    method: str,
    params: NormParams,
    activated: np.ndarray | None = None,
) -> np.ndarray:
    """(m, d+5) float32 query vectors ``[w·q, c(q)]`` to search ``[g, stat(g)]`` by inner product.

    queries: (m, d) raw query embeddings; they are L2-normalised here, as the service does.
    activated: (m, 2) bool, required for the dynamic methods (see the module docstring).
    """
    unit = check_embeddings(queries, field="queries").astype(np.float32, copy=False)
    plan = query_plan(method, params, unit.shape[0], activated)
    return plan_coordinates(plan, unit)


def score_offsets(
    method: str,
    params: NormParams,
    bank_sizes: tuple[int, int],
    m: int = 1,
    activated: np.ndarray | None = None,
) -> np.ndarray:
    """(m,) constants to add to the engine's inner products to get the service's scores.

    The stat columns hold log-mean-exp, i.e. ``log Z − log N``; the offset adds the ``log N``
    back (``−c_BQ·…`` form: ``c_BQ·log|BQ| + c_BG·log|BG|``); DBSN's is ``1 − τ·log|BG|``.
    Zero for raw, nnn and csls.
    """
    return query_plan(method, params, m, activated, bank_sizes).offsets


def activation_flags(
    top1_ids: Sequence[str],
    query_bank_activated: Collection[str],
    gallery_bank_activated: Collection[str],
) -> np.ndarray:
    """(m, 2) bool: is each query's raw top-1 id in (A_BQ, A_BG)? Sets make this O(m)."""
    return np.array(
        [(i in query_bank_activated, i in gallery_bank_activated) for i in top1_ids],
        dtype=bool,
    ).reshape(len(top1_ids), 2)


def method_recipes(params: NormParams, bank_sizes: tuple[int, int]) -> dict[str, dict]:
    """Per method: similarity weight, stat coefficients (for a fully activated query), offset
    and whether the raw top-1 pass is needed; the export's sidecar publishes this table."""
    recipes: dict[str, dict] = {}
    for method in METHODS:
        normaliser = get_normaliser(method)
        everything = np.ones((1, 2), dtype=bool)
        plan = normaliser.plan(params, bank_sizes, 1, everything if normaliser.dynamic else None)
        recipe = {
            "description": normaliser.description,
            "similarity_weight": plan.weight,
            "coefficients": dict(zip(STAT_COLUMNS, plan.coefficients[0].tolist(), strict=True)),
            "offset": float(plan.offsets[0]),
            "dynamic": normaliser.dynamic,
        }
        if normaliser.dynamic:
            # a_Q / a_G: the raw top-1 item is in A_BQ / A_BG; a 0 zeroes that coefficient and
            # its share of the offset
            recipe["gated_by"] = {"lme_query_bank": "a_Q", "lme_gallery_bank": "a_G"}
        recipes[method] = recipe
    return recipes
