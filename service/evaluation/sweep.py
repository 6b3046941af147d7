"""Exact re-scoring for parameter sweeps, without recomputing anything a grid point shares.

Every method scores ``w·s(q, g) + c(q)·stat(g)`` (:mod:`service.algorithms.normalisers`), and
across a β grid only the two log-mean-exp stat columns change (across a τ grid, only DBSN's).
So a sweep computes, once:

- the raw similarities ``S = Q Gᵀ`` of the split (small: validation or test, m × n);
- each bank's log-mean-exp at *every* β of the grid, from one blocked pass of ``G · bankᵀ``
  (:func:`lme_grid`), instead of one :func:`~service.algorithms.prepare_items` per β;
- the β-free columns (NNN, CSLS) and the activation flags from one ``prepare_items``;

and then ranks each grid point's truth items with an O(m·n) pass over ``S`` using the core's own
query plans (:meth:`Normaliser.plan`), so a method's formula lives in one place only.

InvGC LocalAdj sweeps use the same trick. With ``u_X = (1/K) Σ_{top-K} s(g, b) b`` (one scan per
bank and pool rate), ``m_X(g) = (g − r u_X)/‖g − r u_X‖`` and ``g' = (m_G + m_Q)/‖m_G + m_Q‖``,
so ``q·g'`` is a per-item combination of ``q·g``, ``q·u_G`` and ``q·u_Q`` whose coefficients
need only six per-item dot products: every (r_gallery_bank, r_query_bank) pair costs O(m·n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse

from service.algorithms import (
    Banks,
    GalleryView,
    InvGCParams,
    NormParams,
    QueryPlan,
    plan_for,
    prepare_items,
)
from service.algorithms.blocks import block_rows, row_blocks, topk_desc
from service.algorithms.scan import scan_bank
from service.algorithms.stats import DBSN, LME_GALLERY_BANK, LME_QUERY_BANK
from service.evaluation.methods import Split

#: Query rows ranked at once: bounds the temporaries to ``QUERY_CHUNK × n`` floats.
QUERY_CHUNK = 1024
#: lme_grid uses the moment series while β·max|d| ≤ SERIES_SPAN (remainder < 0.1⁷/7! ≈ 2e-11).
SERIES_SPAN = 0.1
SERIES_TERMS = 6


def count_ranks(
    truth: np.ndarray, scores: Callable[[slice], np.ndarray], chunk: int = QUERY_CHUNK
) -> np.ndarray:
    """(m,) 1-based rank of each query's true row: 1 + #items scoring strictly higher.

    ``scores(rows)`` returns the (len(rows), n) scores of those query rows.
    """
    m = truth.shape[0]
    ranks = np.empty(m, np.int64)
    for sl in row_blocks(m, chunk):
        block = scores(sl)
        true = block[np.arange(block.shape[0]), truth[sl]]
        ranks[sl] = np.count_nonzero(block > true[:, None], axis=1) + 1
    return ranks


@dataclass(frozen=True)
class Similarities:
    """A split's raw similarities ``S`` (m, n), its truth rows and each query's raw top-1 row."""

    sims: np.ndarray
    truth: np.ndarray
    top1: np.ndarray

    @classmethod
    def of(cls, queries: np.ndarray, gallery: np.ndarray, truth: np.ndarray) -> Similarities:
        sims = queries @ gallery.T
        return cls(sims, truth, sims.argmax(axis=1))

    @classmethod
    def of_split(cls, split: Split) -> Similarities:
        return cls.of(split.queries, split.gallery, split.truth)

    def ranks(self, stats: np.ndarray, plan: QueryPlan) -> np.ndarray:
        """Ranks under ``plan`` with the gallery's (n, #stat columns) ``stats``. Dividing by the
        positive weight ``w`` leaves each query's ranking unchanged; queries share at most four
        distinct coefficient rows (activation patterns), so each pattern's bias is computed once."""
        coef = plan.coefficients / plan.weight
        patterns, inverse = np.unique(coef, axis=0, return_inverse=True)
        biases = (patterns @ stats.T.astype(np.float64)).astype(self.sims.dtype)
        if len(patterns) == 1:
            return count_ranks(self.truth, lambda sl: self.sims[sl] + biases[0])
        return count_ranks(self.truth, lambda sl: self.sims[sl] + biases[inverse[sl]])

    def method_ranks(
        self, method: str, params: NormParams, stats: np.ndarray, view: GalleryView
    ) -> np.ndarray:
        """Ranks of ``method``, planned with the split's precomputed raw top-1."""
        plan = plan_for(method, params, view, self.truth.shape[0], lambda: self.top1)
        return self.ranks(stats, plan)


def lme_grid(items: np.ndarray, bank: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """(len(betas), n): ``log mean_b exp(β s(b, g))`` for every β, from one blocked pass.

    Equals :func:`~service.algorithms.blocks.log_mean_exp` of ``β·S`` (to float32 rounding),
    but cheaper per β: with ``d = s − max_b s ≤ 0``, ``lme = β max + log1p(mean expm1(β d))``
    and ``mean expm1(β d)`` is either the Taylor series ``Σ_j β^j mean(d^j)/j!`` from moments
    shared by every small β (precise where float32 ``exp`` would lose the tiny differences),
    or a float32 ``exp`` (several times faster than ``expm1``) where ``β·max|d|`` is not small.
    """
    betas = np.asarray(betas, dtype=np.float64)
    out = np.empty((betas.size, items.shape[0]), items.dtype)
    bank_t = np.ascontiguousarray(bank.T)
    for sl in row_blocks(items.shape[0], block_rows(bank.shape[0], items.dtype.itemsize)):
        sims = items[sl] @ bank_t
        top = sims.max(axis=1)
        diff = sims - top[:, None]
        span = float(-diff.min()) if diff.size else 0.0
        moments: list[np.ndarray] = []
        for i, beta in enumerate(betas):
            if beta * span <= SERIES_SPAN:
                if not moments:
                    power = np.ones_like(diff)
                    for _ in range(SERIES_TERMS):
                        power *= diff
                        moments.append(power.mean(axis=1, dtype=np.float64))
                mean = sum(beta**j * m / math.factorial(j) for j, m in enumerate(moments, start=1))
            else:
                mean = np.exp(diff * diff.dtype.type(beta)).mean(axis=1, dtype=np.float64) - 1
            out[i, sl] = beta * top + np.log1p(mean)
    return out


@dataclass(frozen=True)
class GalleryProfile:
    """Everything a β sweep needs from one gallery: its prepared view (β-free columns and
    activation flags) and both banks' log-mean-exp at every β of ``betas``."""

    view: GalleryView
    betas: np.ndarray
    lme_query_bank: np.ndarray
    lme_gallery_bank: np.ndarray
    banks: Banks

    @classmethod
    def build(
        cls,
        gallery: np.ndarray,
        banks: Banks,
        norm: NormParams,
        betas: np.ndarray,
        view: GalleryView | None = None,
    ) -> GalleryProfile:
        """Profile ``gallery``; pass its already prepared ``view`` (any β) to skip that step."""
        if view is None:
            view = prepare_items(gallery, banks, norm, None).original
        betas = np.unique(np.asarray(betas, dtype=np.float64))
        return cls(
            view,
            betas,
            lme_grid(gallery, banks.query_bank, betas),
            lme_grid(gallery, banks.gallery_bank, betas),
            banks,
        )

    def _index(self, beta: float) -> int:
        i = int(np.searchsorted(self.betas, beta))
        if i == self.betas.size or not np.isclose(self.betas[i], beta, rtol=1e-12, atol=0):
            raise KeyError(f"β={beta} is not on the profiled grid")
        return i

    def stats(self, beta_query_bank: float, beta_gallery_bank: float) -> np.ndarray:
        """(n, len(STAT_COLUMNS)) stat columns at this β pair (the other columns as prepared)."""
        stats = self.view.stats.copy()
        stats[:, LME_QUERY_BANK] = self.lme_query_bank[self._index(beta_query_bank)]
        stats[:, LME_GALLERY_BANK] = self.lme_gallery_bank[self._index(beta_gallery_bank)]
        return stats

    def dbsn_stats(self, norm: NormParams) -> np.ndarray:
        """(n, #stat columns) stat columns with DBSN's at ``norm``'s τ and T: one Sinkhorn solve
        of the banks (memoised by them) and one scan of the gallery against the query bank."""
        stats = self.view.stats.copy()
        scan = scan_bank(self.view.embeddings, self.banks.query_bank, dbsn=self.banks.dbsn(norm))
        stats[:, DBSN] = scan.dbsn
        return stats


class _Neighbours:
    """Each gallery item's K_max most similar bank items (best first), found in one blocked
    pass, so every pool rate's LocalAdj neighbour mean ``u_X`` is a slice of the same lists."""

    def __init__(self, items: np.ndarray, bank: np.ndarray, k_max: int) -> None:
        self.bank = bank
        k_max = min(k_max, bank.shape[0])
        self.idx = np.empty((items.shape[0], k_max), np.int64)
        self.sim = np.empty((items.shape[0], k_max), items.dtype)
        bank_t = np.ascontiguousarray(bank.T)
        for sl in row_blocks(items.shape[0], block_rows(bank.shape[0], items.dtype.itemsize)):
            self.idx[sl], self.sim[sl] = topk_desc(items[sl] @ bank_t, k_max)

    def mean(self, k: int) -> np.ndarray:
        """(n, d) ``u = (1/K) Σ_{b in top-K of g} s(g, b) b`` (LocalAdj's push direction)."""
        n = self.idx.shape[0]
        rows = sparse.csr_array(
            (self.sim[:, :k].ravel(), self.idx[:, :k].ravel(), np.arange(0, n * k + 1, k)),
            shape=(n, self.bank.shape[0]),
        )
        return (rows @ self.bank) / k


@dataclass(frozen=True)
class _Pushes:
    """One pool rate's InvGC LocalAdj ingredients for a split (see the module docstring)."""

    q_ug: np.ndarray  # (m, n) q·u_G
    q_uq: np.ndarray  # (m, n) q·u_Q
    g_ug: np.ndarray  # (n,) g·u_G, and so on: float64 per-item dot products
    g_uq: np.ndarray
    ug_ug: np.ndarray
    uq_uq: np.ndarray
    ug_uq: np.ndarray
    g_g: np.ndarray

    @classmethod
    def build(cls, split: Split, ug: np.ndarray, uq: np.ndarray) -> _Pushes:
        g = split.gallery.astype(np.float64)
        ug64, uq64 = ug.astype(np.float64), uq.astype(np.float64)

        def dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.einsum("ij,ij->i", a, b)

        return cls(
            split.queries @ ug.T,
            split.queries @ uq.T,
            dots(g, ug64),
            dots(g, uq64),
            dots(ug64, ug64),
            dots(uq64, uq64),
            dots(ug64, uq64),
            dots(g, g),
        )

    def coefficients(self, r_g: float, r_q: float, dtype: np.dtype) -> tuple[np.ndarray, ...]:
        """Per-item (n,) weights of ``q·g``, ``q·u_G``, ``q·u_Q`` in ``q·g'``."""
        norm_a = np.sqrt(self.g_g - 2 * r_g * self.g_ug + r_g**2 * self.ug_ug)
        norm_b = np.sqrt(self.g_g - 2 * r_q * self.g_uq + r_q**2 * self.uq_uq)
        dot_ab = self.g_g - r_g * self.g_ug - r_q * self.g_uq + r_g * r_q * self.ug_uq
        norm_c = np.sqrt(np.maximum(2 + 2 * dot_ab / (norm_a * norm_b), 0.0))
        weights = (
            (1 / norm_a + 1 / norm_b) / norm_c,
            -r_g / (norm_a * norm_c),
            -r_q / (norm_b * norm_c),
        )
        return tuple(w.astype(dtype) for w in weights)

    def ranks(self, sims: Similarities, r_g: float, r_q: float) -> np.ndarray:
        """Ranks of the raw method on the InvGC-adjusted gallery (``q·g'`` per item)."""
        w_s, w_g, w_q = self.coefficients(r_g, r_q, sims.sims.dtype)
        return count_ranks(
            sims.truth,
            lambda sl: sims.sims[sl] * w_s + self.q_ug[sl] * w_g + self.q_uq[sl] * w_q,
        )


def invgc_sweep(
    split: Split,
    sims: Similarities,
    banks: Banks,
    pool_rates: np.ndarray,
    rates_gallery: np.ndarray,
    rates_query: np.ndarray,
) -> Iterator[tuple[InvGCParams, np.ndarray]]:
    """Yield (LocalAdj params, ranks of the raw method on the adjusted gallery) for the grid."""
    grid = [InvGCParams(pool_rate=float(p)) for p in pool_rates]
    near_g, near_q = (
        _Neighbours(split.gallery, bank, max(p.neighbours(bank.shape[0]) for p in grid))
        for bank in (banks.gallery_bank, banks.query_bank)
    )
    for pool in grid:
        pushes = _Pushes.build(
            split,
            near_g.mean(pool.neighbours(banks.gallery_bank.shape[0])),
            near_q.mean(pool.neighbours(banks.query_bank.shape[0])),
        )
        for r_g in rates_gallery:
            for r_q in rates_query:
                params = replace(pool, r_gallery_bank=float(r_g), r_query_bank=float(r_q))
                yield params, pushes.ranks(sims, float(r_g), float(r_q))
