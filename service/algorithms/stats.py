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

from service.algorithms.blocks import (
    block_rows,
    merge_topk,
    row_blocks,
    topk_desc,
    widened,
    work_dtype,
)
from service.algorithms.params import check_params, param
from service.algorithms.scan import BankScan, scan_bank
from service.algorithms.sinkhorn import DbsnWeights, sinkhorn_log_v

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

    beta_query_bank: float = param(1 / 1.99, "Inverse temperature, query bank", gt=0)
    beta_gallery_bank: float = param(3.0, "Inverse temperature, gallery bank", gt=0)
    dis_topk: int = param(1, "k of the DIS/DualDIS activation sets", ge=1)
    nnn_topk: int = param(128, "NNN: bank neighbours averaged per item", ge=1)
    nnn_alpha: float = param(0.75, "NNN: weight of the bias", ge=0)
    csls_topk: int = param(10, "CSLS: neighbourhood size", ge=1)
    dbsn_tau: float = param(0.01, "DBSN: Sinkhorn temperature τ (> 0)", gt=0)
    dbsn_iterations: int = param(
        1,
        f"DBSN: Sinkhorn iterations (fixed count, no early stop; 1 … {DBSN_MAX_ITERATIONS})",
        ge=1,
        le=DBSN_MAX_ITERATIONS,
    )

    def __post_init__(self) -> None:
        check_params(self)


def spare_width(k: int) -> int:
    """Spare ranks kept past a top-k (see :class:`BankTopK`): a bank item is rescanned only
    once more of its stored rows died than it has spares (and appends refill them)."""
    return max(4, k)


@dataclass(frozen=True)
class BankTopK:
    """Each bank item's current top-k gallery rows (N×k', best first, k' = min(k, n)).

    ``idx`` holds gallery row indices, ``sim`` their similarities. The activation set is the set
    of rows that appear anywhere in the first ``active`` columns of ``idx`` (all of them when
    ``active`` is None): one structure serves both the DIS activation (``dis_topk`` columns) and
    the hub screening (k-occurrence over ``k`` columns), never two copies. Kept up to date on
    gallery changes by :meth:`merge`, :meth:`tombstone` and :meth:`remove`, which touch only
    what changed.

    Spares (optional): ``spare_idx`` / ``spare_sim`` (N, R) the next ranks after the top-k, best
    first, and ``floor`` (N,): every gallery row stored in neither list has a similarity
    ≤ floor, so the spares above the floor are exactly the next ranks (the others are -inf,
    row -1). A top-k row that dies is replaced by the best spare, with no pass over the
    gallery; only a bank item whose spares ran out is rescanned.
    """

    idx: np.ndarray
    sim: np.ndarray
    k: int
    active: int | None = None
    spare_idx: np.ndarray | None = None
    spare_sim: np.ndarray | None = None
    floor: np.ndarray | None = None

    @classmethod
    def from_ranks(
        cls, idx: np.ndarray, sim: np.ndarray, k: int, active: int | None, n: int
    ) -> BankTopK:
        """From each bank item's best ``min(k + spare_width(k), n)`` rows of ``n`` (a scan's
        ``bank_top_idx`` / ``bank_top_sim`` at that width): the top-k and the spares."""
        width = k + spare_width(k)
        floor = np.full(len(idx), -np.inf, sim.dtype)
        if n > width and idx.shape[1] == width:  # rows were left out: none above the last
            floor = sim[:, -1].copy()
        return cls._split(idx, sim, k, active, floor)

    @classmethod
    def _split(
        cls,
        idx: np.ndarray,
        sim: np.ndarray,
        k: int,
        active: int | None,
        floor: np.ndarray,
        top: int | None = None,
    ) -> BankTopK:
        """Stored ranks (N, W) best first → the first ``top`` (default min(k, W)) and spares
        (those ≤ floor dropped)."""
        top = min(k, idx.shape[1]) if top is None else top
        spare = np.full((len(idx), spare_width(k)), -1, np.int64)
        spare_sim = np.full((len(idx), spare_width(k)), -np.inf, sim.dtype)
        rest = min(spare.shape[1], idx.shape[1] - top)
        spare[:, :rest], spare_sim[:, :rest] = idx[:, top : top + rest], sim[:, top : top + rest]
        below = spare_sim <= floor[:, None]
        spare[below], spare_sim[below] = -1, -np.inf
        return cls(
            np.ascontiguousarray(idx[:, :top]),
            np.ascontiguousarray(sim[:, :top]),
            k,
            active,
            spare,
            spare_sim,
            floor,
        )

    @classmethod
    def build(
        cls, gallery: np.ndarray, bank: np.ndarray, k: int, active: int | None = None
    ) -> BankTopK:
        """Each bank item's top-k (and spares) over the whole gallery (blocked, O(n·N·d))."""
        scan = scan_bank(gallery, bank, bank_topk=k + spare_width(k))
        return cls.from_ranks(scan.bank_top_idx, scan.bank_top_sim, k, active, len(gallery))

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

    def _stored(self, rows: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(N, k' + R) rows and similarities of the top-k then the spares (-1 / -inf: none),
        of the bank items ``rows`` (default all)."""
        if self.spare_idx is None or self.spare_sim is None:
            return self.idx[rows], self.sim[rows]
        return (
            np.hstack([self.idx[rows], self.spare_idx[rows]]),
            np.hstack([self.sim[rows], self.spare_sim[rows]]),
        )

    def merge(self, batch: BankTopK, first_row: int) -> BankTopK:
        """Account for a batch appended at rows ``first_row, …``, given the batch's own top-k
        (rows numbered from 0 within the batch, at least as wide): no similarity needed.

        Only the bank items whose stored ranks the batch enters are re-ranked (a tie keeps the
        existing, lower row, as a fresh build would): O(N) plus O(changed·k log k)."""
        if batch.k < self.k:
            raise ValueError(f"a batch top-{batch.k} cannot update a top-{self.k} state")
        if self.floor is not None and batch.floor is not None:
            return self._merge_ranks(batch, first_row)
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

    def _merge_ranks(self, batch: BankTopK, first_row: int) -> BankTopK:
        """:meth:`merge` with spares on both sides: the stored ranks of the bank items the
        batch has a row above the floor for are merged; the floor rises to the best rank that
        no longer fits (and to the batch's floor: its unstored rows are below that)."""
        assert self.floor is not None and batch.floor is not None
        if batch.idx.shape[1] == 0:  # an empty batch (its best rank leads its stored ranks)
            return self
        changed = np.flatnonzero((batch.sim[:, 0] > self.floor) | (self.idx.shape[1] < self.k))
        if not changed.size:
            return self
        # only the bank items that change are gathered: a one-item batch changes a few
        mine_idx, mine_sim = self._stored(changed)
        b_idx, b_sim = batch._stored(changed)
        width = self.k + spare_width(self.k)
        b_idx = np.where(b_idx >= 0, b_idx + first_row, -1)
        idx, sim = merge_topk(mine_idx, mine_sim, b_idx, b_sim, width + 1)
        floor = np.maximum(self.floor[changed], batch.floor[changed])
        if sim.shape[1] > width:  # the first rank left out bounds every unstored row
            floor = np.maximum(floor, sim[:, width])
            idx, sim = idx[:, :width], sim[:, :width]
        top = min(self.k, self.idx.shape[1] + batch.idx.shape[1])
        part = BankTopK._split(idx, sim, self.k, self.active, floor, top)
        if top != self.idx.shape[1]:  # filling up: every bank item changed (all stored)
            return part
        return self._with_rows(changed, part)

    def _with_rows(self, rows: np.ndarray, part: BankTopK) -> BankTopK:
        """A copy with bank items ``rows`` replaced by ``part``'s (same widths, spares on)."""
        assert self.spare_idx is not None and self.spare_sim is not None
        assert self.floor is not None and part.floor is not None
        idx, sim = self.idx.copy(), self.sim.copy()
        spare, spare_sim, floor = self.spare_idx.copy(), self.spare_sim.copy(), self.floor.copy()
        idx[rows], sim[rows] = part.idx, part.sim
        spare[rows], spare_sim[rows], floor[rows] = part.spare_idx, part.spare_sim, part.floor
        return BankTopK(idx, sim, self.k, self.active, spare, spare_sim, floor)

    def tombstone(self, live: np.ndarray, gallery: np.ndarray, bank: np.ndarray) -> BankTopK:
        """Account for rows that died in place: ``live`` (n,) is False at every dead row, and
        ``gallery`` (n, d) still holds them (rows keep their numbers).

        A bank item whose stored ranks held a dead row drops it: its top-k takes the next
        ranks from the spares (O(k)); only when the spares run out is it rescanned over the
        live rows (O(n·d)). A dead row is then in no bank item's top-k, so it is neither
        activated nor counted in any k-occurrence.
        """
        if not self.idx.size:
            return self
        k_now = min(self.k, int(np.count_nonzero(live)))
        if k_now < self.idx.shape[1]:  # fewer live rows than k: every bank item lost a row
            return self._rescan(np.arange(len(bank)), live, gallery, bank, k_now)

        def holding(ranks: np.ndarray) -> np.ndarray:
            """The bank items (rows of ``ranks``) holding a dead row, by O(N·k) gathers and
            the flat positions of the hits (numpy's row-wise ``all`` over short rows cost 4×
            as much); an empty spare, -1, may read a dead last row: that item drops nothing."""
            return np.flatnonzero(~live[ranks]) // max(1, ranks.shape[1])

        found = [holding(self.idx)]
        if self.spare_idx is not None:
            found.append(holding(self.spare_idx))
        rows = np.unique(np.concatenate(found))
        if not rows.size:
            return self
        if self.floor is None:  # no spares: rescan
            return self._rescan(rows, live, gallery, bank, k_now)
        idx, sim = self._stored(rows)
        gone = (idx >= 0) & ~live[idx]
        idx[gone], sim[gone] = -1, -np.inf
        order = np.argsort(gone, axis=1, kind="stable")  # the live ranks first, in their order
        idx, sim = np.take_along_axis(idx, order, axis=1), np.take_along_axis(sim, order, axis=1)
        width = self.idx.shape[1]  # = k_now: the top-k keeps its width
        part = BankTopK._split(idx, sim, self.k, self.active, self.floor[rows], width)
        short = np.flatnonzero(part.sim[:, -1] == -np.inf)  # spares ran out: not k ranks left
        state = self._with_rows(rows, part)
        return state if not short.size else state._rescan(rows[short], live, gallery, bank, k_now)

    def _rescan(
        self, rows: np.ndarray, live: np.ndarray, gallery: np.ndarray, bank: np.ndarray, k: int
    ) -> BankTopK:
        """Bank items ``rows`` ranked afresh over the live rows (top-k and spares); ``k``:
        the top-k width now (smaller than ``self.k`` when fewer rows live)."""
        alive = int(np.count_nonzero(live))
        if self.floor is None:
            idx, sim = live_topk(gallery, bank[rows], k, live, self.sim.dtype)
            if k == self.idx.shape[1]:
                new_idx, new_sim = self.idx.copy(), self.sim.copy()
                new_idx[rows], new_sim[rows] = idx, sim
                return BankTopK(new_idx, new_sim, self.k, self.active)
            return BankTopK(idx, sim, self.k, self.active)
        width = self.k + spare_width(self.k)
        idx, sim = live_topk(gallery, bank[rows], width, live, self.sim.dtype)
        part = BankTopK.from_ranks(idx, sim, self.k, self.active, alive)
        if k == self.idx.shape[1]:
            return self._with_rows(rows, part)
        return part  # every bank item, at the new width

    def remove(self, keep: np.ndarray, gallery: np.ndarray, bank: np.ndarray) -> BankTopK:
        """Account for deleting the rows where ``keep`` (old n,) is False: as if they died
        (:meth:`tombstone`, ``gallery`` the rows before the deletion), then renumbered."""
        state = self.tombstone(keep, gallery, bank)
        new_row = np.append(np.cumsum(keep) - 1, -1)  # row -1 (no spare) stays -1
        spare = None if state.spare_idx is None else new_row[state.spare_idx]
        return BankTopK(
            new_row[state.idx],
            state.sim,
            self.k,
            self.active,
            spare,
            state.spare_sim,
            state.floor,
        )


def live_topk(
    gallery: np.ndarray, bank: np.ndarray, k: int, live: np.ndarray, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Each bank row's top-k gallery rows among the ``live`` ones (n,) bool, best first, lower
    row on ties (as a fresh scan ranks them): (N, min(k, live)) rows and similarities in
    ``dtype``. Blocked over the gallery; the dead rows score -inf and are never picked."""
    k = min(k, int(np.count_nonzero(live)))
    idx = np.empty((len(bank), 0), np.int64)
    sim = np.empty((len(bank), 0), dtype)
    work = work_dtype(gallery.dtype)
    bank = bank.astype(work, copy=False)
    for sl in row_blocks(gallery.shape[0], block_rows(max(1, len(bank)), work.itemsize)):
        block = widened(gallery[sl]) @ bank.T  # (B, N) as the scan computes it
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
