"""Per-gallery-item bank statistics: everything DBNorm, NNN and CSLS need, as columns.

The bias every normaliser adds to ``s(q, g)`` is a linear combination of a few numbers per
gallery item (:data:`STAT_COLUMNS`), each depending only on that item and the (fixed) banks:

====================  =====================================================================
``lme_query_bank``    ``log mean_{b∈BQ} exp(β_q s(b, g))`` = ``log Z_BQ(g) − log |BQ|``
``lme_gallery_bank``  ``log mean_{b∈BG} exp(β_g s(b, g))`` = ``log Z_BG(g) − log |BG|``
``nnn_mean``          mean of the ``nnn_topk`` largest ``s(b, g)`` over ``b ∈ BQ``
``csls_mean``         mean of the ``csls_topk`` largest ``s(b, g)`` over ``b ∈ BQ``
``dbsn``              ``τ · logsumexp_{b∈BQ}(log v_b + s(b, g)/τ)``, v the Sinkhorn column
                      weights of the banks (:mod:`service.algorithms.sinkhorn`)
====================  =====================================================================

DBSN's column is ``1 − τ log |BG| − τ log u(g)``: the constants go to the query plan's offsets,
so the stored value stays O(1) for any τ (``τ log v`` is about ``1 − max s``). Log-mean-exp
instead of log Z: the two differ by the constant ``log N`` (same for every item,
so rankings are unchanged), and dropping it keeps float32 precise when β is tiny; the scorer
adds the constant back to reported scores. Because a batch's stats never involve other gallery
items, upserts are exact and cost O(batch · N · d).

The dynamic methods (DIS, DualDIS) also need each bank's *activation set*: the union over bank
items of their top-k gallery items. It depends on the whole gallery, so it is kept as each bank
item's current top-k (:class:`BankTopK`), which is updated incrementally on adds and deletes.
The same state, kept wider for the query bank, gives every gallery item's query-bank
k-occurrence (how many bank queries have it in their raw top-k), which screens upserts for
adversarial hubs (SPEC.md, "Hubs and adversarial hubs").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.algorithms.blocks import block_rows, merge_topk, row_blocks, topk_desc, work_dtype
from service.algorithms.scan import BankScan, scan_bank
from service.algorithms.sinkhorn import DbsnWeights, sinkhorn_log_v
from service.algorithms.validation import (
    InputError,
    check_count,
    check_non_negative,
    check_positive,
)

STAT_COLUMNS = ("lme_query_bank", "lme_gallery_bank", "nnn_mean", "csls_mean", "dbsn")
LME_QUERY_BANK, LME_GALLERY_BANK, NNN_MEAN, CSLS_MEAN, DBSN = range(len(STAT_COLUMNS))
#: Most Sinkhorn iterations accepted: each is one pass over |BG|×|BQ| similarities at startup.
DBSN_MAX_ITERATIONS = 1000


def log_bank_sizes(bank_sizes: tuple[int, int]) -> np.ndarray:
    """(2,) float64 ``log |bank|``, the constant that turns log-mean-exp into log Z.

    An empty bank (a live query bank before its first served query) has no statistics: its
    columns are 0 (see :func:`~service.algorithms.scan.scan_bank`) and its log-size is taken as
    0, so its term contributes nothing and the method serves raw scores for it.
    """
    return np.log(np.maximum(np.asarray(bank_sizes, dtype=np.float64), 1.0))


@dataclass(frozen=True)
class NormParams:
    """Score-normalisation parameters, validated on construction. Named by bank, never β1/β2.

    beta_query_bank / beta_gallery_bank: inverse temperatures against each bank (> 0); the
    released DBNorm code uses 1/1.99 and 3. dis_topk: k of the DIS activation sets.
    nnn_topk / nnn_alpha: NNN's neighbour count and weight. csls_topk: CSLS neighbourhood.
    dbsn_tau / dbsn_iterations: DBSN's Sinkhorn temperature (> 0; 0.01 in the paper) and fixed
    iteration count (1 … DBSN_MAX_ITERATIONS; the default one measured within 0.1 pt of ten
    on the demo and pydoc sets, at a tenth of the solve: docs/performance.md).
    """

    beta_query_bank: float = 1 / 1.99
    beta_gallery_bank: float = 3.0
    dis_topk: int = 1
    nnn_topk: int = 128
    nnn_alpha: float = 0.75
    csls_topk: int = 10
    dbsn_tau: float = 0.01
    dbsn_iterations: int = 1

    def __post_init__(self) -> None:
        check_positive("beta_query_bank", self.beta_query_bank)
        check_positive("beta_gallery_bank", self.beta_gallery_bank)
        check_count("dis_topk", self.dis_topk)
        check_count("nnn_topk", self.nnn_topk)
        check_non_negative("nnn_alpha", self.nnn_alpha)
        check_count("csls_topk", self.csls_topk)
        check_positive("dbsn_tau", self.dbsn_tau)
        check_count("dbsn_iterations", self.dbsn_iterations)
        if self.dbsn_iterations > DBSN_MAX_ITERATIONS:
            raise InputError(
                "dbsn_iterations",
                f"expected at most {DBSN_MAX_ITERATIONS}, got {self.dbsn_iterations}",
            )


@dataclass(frozen=True)
class BankTopK:
    """Each bank item's current top-k gallery rows (N×k', best first, k' = min(k, n)).

    ``idx`` holds gallery row indices, ``sim`` their similarities. The activation set is the set
    of rows that appear anywhere in the first ``active`` columns of ``idx`` (all of them when
    ``active`` is None): one structure serves both the DIS activation (``dis_topk`` columns) and
    the hub screening (k-occurrence over ``k`` columns), never two copies. Kept up to date on
    gallery changes by :meth:`merge` and :meth:`remove`, which touch only what changed.
    """

    idx: np.ndarray
    sim: np.ndarray
    k: int
    active: int | None = None

    @classmethod
    def build(
        cls, gallery: np.ndarray, bank: np.ndarray, k: int, active: int | None = None
    ) -> BankTopK:
        """Each bank item's top-k over the whole gallery (blocked, O(n·N·d))."""
        scan = scan_bank(gallery, bank, bank_topk=k)
        return cls(scan.bank_top_idx, scan.bank_top_sim, k, active)

    def activated(self, n: int) -> np.ndarray:
        """(n,) bool: which gallery rows are in the activation set."""
        flags = np.zeros(n, dtype=bool)
        flags[self.idx[:, : self.active].ravel()] = True
        return flags

    def occurrence(self, n: int, k: int) -> np.ndarray:
        """(n,) int64 bank k-occurrence: how many bank items have each row in their top-k
        (k ≤ self.k; zeros included). O(N·k + n)."""
        if k > self.k:
            raise ValueError(f"k-occurrence at k={k} needs a top-k state of width ≥ k ({self.k})")
        return np.bincount(self.idx[:, :k].ravel(), minlength=n).astype(np.int64)

    def merge(self, batch: BankTopK, first_row: int) -> BankTopK:
        """Account for a batch appended at rows ``first_row, …``, given the batch's own top-k
        (rows numbered from 0 within the batch, at least as wide): no similarity needed.

        Only the bank items whose k-th best the batch beats are re-ranked (a tie keeps the
        existing, lower row, as a fresh build would): O(N) plus O(changed·k log k)."""
        if batch.k < self.k:
            raise ValueError(f"a batch top-{batch.k} cannot update a top-{self.k} state")
        if self.idx.shape[1] < self.k or batch.idx.shape[1] == 0:  # still filling up (or no-op)
            idx, sim = merge_topk(self.idx, self.sim, batch.idx + first_row, batch.sim, self.k)
            return BankTopK(idx, sim, self.k, self.active)
        changed = np.flatnonzero(batch.sim[:, 0] > self.sim[:, -1])
        idx, sim = self.idx.copy(), self.sim.copy()
        if changed.size:
            idx[changed], sim[changed] = merge_topk(
                self.idx[changed],
                self.sim[changed],
                batch.idx[changed] + first_row,
                batch.sim[changed],
                self.k,
            )
        return BankTopK(idx, sim, self.k, self.active)

    def tombstone(self, live: np.ndarray, gallery: np.ndarray, bank: np.ndarray) -> BankTopK:
        """Account for rows that died in place: ``live`` (n,) is False at every dead row, and
        ``gallery`` (n, d) still holds them (rows keep their numbers).

        Only the bank items whose top-k held a row that is no longer live are rescanned, over
        the live rows (O(affected·n·d)); the others are kept as they are. A dead row is then
        in no bank item's top-k, so it is neither activated nor counted in any k-occurrence.
        """
        if not self.idx.size:
            return self
        k_now = min(self.k, int(np.count_nonzero(live)))
        hit = ~live[self.idx].all(axis=1)
        if k_now < self.idx.shape[1]:  # fewer live rows than k: every bank item lost a row
            hit[:] = True
        if not hit.any():
            return self
        idx = np.empty((len(bank), k_now), np.int64)
        sim = np.empty((len(bank), k_now), self.sim.dtype)
        idx[~hit], sim[~hit] = self.idx[~hit, :k_now], self.sim[~hit, :k_now]
        idx[hit], sim[hit] = live_topk(gallery, bank[hit], k_now, live, self.sim.dtype)
        return BankTopK(idx, sim, self.k, self.active)

    def remove(self, keep: np.ndarray, gallery: np.ndarray, bank: np.ndarray) -> BankTopK:
        """Account for deleting the rows where ``keep`` (old n,) is False.

        ``gallery`` is the gallery after the deletion (kept rows, in order). Bank items whose
        top-k lost a row are recomputed against it (O(affected·n·d)); the rest are renumbered.
        """
        new_row = np.cumsum(keep) - 1
        hit = ~keep[self.idx].all(axis=1) if self.idx.size else np.zeros(len(bank), bool)
        k_now = min(self.k, gallery.shape[0])
        idx = np.empty((len(bank), k_now), np.int64)
        sim = np.empty((len(bank), k_now), self.sim.dtype)
        stay = ~hit
        if k_now == self.idx.shape[1]:
            idx[stay], sim[stay] = new_row[self.idx[stay]], self.sim[stay]
        else:  # the gallery shrank below k: every bank item lost a row
            stay[:] = False
        redo = ~stay
        if redo.any() and k_now:
            fresh = BankTopK.build(gallery, bank[redo], self.k)
            idx[redo], sim[redo] = fresh.idx, fresh.sim
        return BankTopK(idx, sim, self.k, self.active)


def live_topk(
    gallery: np.ndarray, bank: np.ndarray, k: int, live: np.ndarray, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Each bank row's top-k gallery rows among the ``live`` ones (n,) bool, best first, lower
    row on ties (as a fresh scan ranks them): (N, k) rows and (N, k) similarities in
    ``dtype``. Blocked over the gallery; the dead rows score -inf and are never picked."""
    idx = np.empty((len(bank), 0), np.int64)
    sim = np.empty((len(bank), 0), dtype)
    work = work_dtype(gallery.dtype)
    bank = bank.astype(work, copy=False)
    for sl in row_blocks(gallery.shape[0], block_rows(max(1, len(bank)), work.itemsize)):
        block = gallery[sl].astype(work, copy=False) @ bank.T  # (B, N) as the scan computes it
        block[~live[sl]] = -np.inf
        blk_idx, blk_sim = topk_desc(np.ascontiguousarray(block.T), k)
        idx, sim = merge_topk(idx, sim, blk_idx + sl.start, blk_sim.astype(dtype), k)
    return idx, sim


def stats_from_scans(
    query_scan: BankScan, gallery_scan: BankScan, params: NormParams
) -> np.ndarray:
    """Assemble the (n, len(STAT_COLUMNS)) stat columns from one scan against each bank."""
    return np.column_stack(
        [
            query_scan.log_mean_exp,
            gallery_scan.log_mean_exp,
            query_scan.topk_means[params.nnn_topk],
            query_scan.topk_means[params.csls_topk],
            query_scan.dbsn,
        ]
    )


def dbsn_weights(
    query_bank: np.ndarray, gallery_bank: np.ndarray, params: NormParams
) -> DbsnWeights:
    """Solve the banks' Sinkhorn column weights at the parameters' τ and T (no cache: see
    :meth:`service.algorithms.views.Banks.dbsn` for the memoised form)."""
    log_v = sinkhorn_log_v(gallery_bank, query_bank, params.dbsn_tau, params.dbsn_iterations)
    return DbsnWeights(log_v, params.dbsn_tau)


def query_bank_scan(
    items: np.ndarray,
    query_bank: np.ndarray,
    params: NormParams,
    dbsn: DbsnWeights,
    **extra: int | None,
) -> BankScan:
    """The scan of items against the query bank that :func:`stats_from_scans` needs
    (``dbsn``: the banks' solved weights at ``params.dbsn_tau``)."""
    return scan_bank(
        items,
        query_bank,
        beta=params.beta_query_bank,
        mean_topk=(params.nnn_topk, params.csls_topk),
        dbsn=dbsn,
        **extra,
    )


def gallery_bank_scan(
    items: np.ndarray, gallery_bank: np.ndarray, params: NormParams, **extra: int | None
) -> BankScan:
    """The scan of items against the gallery bank that :func:`stats_from_scans` needs."""
    return scan_bank(items, gallery_bank, beta=params.beta_gallery_bank, **extra)


def item_stats(
    items: np.ndarray, query_bank: np.ndarray, gallery_bank: np.ndarray, params: NormParams
) -> np.ndarray:
    """(n, len(STAT_COLUMNS)) stat columns (see :data:`STAT_COLUMNS`) of normalised items.

    Depends only on the items and the banks: a batch alone equals the batch in any gallery.
    """
    weights = dbsn_weights(query_bank, gallery_bank, params)
    return stats_from_scans(
        query_bank_scan(items, query_bank, params, weights),
        gallery_bank_scan(items, gallery_bank, params),
        params,
    )
