"""One blocked pass of gallery items against a bank, computing every per-item reduction at once.

The expensive part of InvGC and of every DBNorm statistic is the similarity matrix
``S = items · bankᵀ``. This module computes it one block of rows at a time and derives from each
block everything that is asked for (log-mean-exp at some β, mean of the top-k similarities,
the LocalAdj neighbour sum, DBSN's row update, each bank item's best gallery items), so the
product is computed once per bank and never held whole.

Cost model (why it is shaped like this): the block product is BLAS (all cores); the per-row
reductions are not, so they run on :func:`~service.algorithms.blocks.parallel_map` threads over
cache-sized row chunks. The neighbour sum is a sparse (rows × N, K per row) product with the
bank, done column-major (CSC) so each bank row is read once per block instead of once per
neighbour. Each bank item's best row (k = 1, the default DIS activation) is a column maximum,
not a transposed copy and a partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import sparse

from service.algorithms import fused
from service.algorithms.blocks import (
    _EXP_PATH_MAX_MEAN,
    CHUNK_BYTES,
    FUSED_PARTS,
    INLINE_ENTRIES,
    bank_product,
    block_rows,
    log_mean_exp,
    merge_topk,
    parallel_map,
    row_blocks,
    topk_desc,
    widened,
    work_dtype,
)
from service.algorithms.sinkhorn import DbsnWeights, dbsn_row_stat

_progress: ContextVar[Callable[[int], None] | None] = ContextVar("scan_progress", default=None)


@contextmanager
def scan_progress(callback: Callable[[int], None]) -> Iterator[None]:
    """Call ``callback(pairs)`` after every block that :func:`scan_bank` finishes in this context
    (this thread), with the block's ``rows × bank size`` similarities: a progress bar for long
    precomputes without threading a parameter through every caller. ``prepare_items`` of n items
    scans n·(|BQ| + |BG|) pairs, twice with InvGC (original and adjusted items)."""
    token = _progress.set(callback)
    try:
        yield
    finally:
        _progress.reset(token)


@dataclass
class BankScan:
    """Reductions of ``S = items · bankᵀ`` (items: n×d, bank: N×d).

    log_mean_exp: (n,) ``log mean_b exp(β s(b, g))`` (log Z minus log N), if β was given.
    dbsn: (n,) ``τ · logsumexp_b(log v_b + s(b, g)/τ)`` (DBSN's row update, float64 sums), if
        Sinkhorn column weights were given (:func:`~service.algorithms.sinkhorn.dbsn_row_stat`).
    topk_means: {k: (n,) mean of the k largest s(b, g) over b}.
    neighbour_sum: (n, d) ``Σ_{b in top-K of g} s(g, b) · b`` (LocalAdj), if K was given.
    bank_top_idx / bank_top_sim: (N, k) each bank item's k most similar items, best first
        (row indices into ``items``), if k was given: the DIS activation set's raw material.
    """

    log_mean_exp: np.ndarray | None = None
    dbsn: np.ndarray | None = None
    topk_means: dict[int, np.ndarray] = field(default_factory=dict)
    neighbour_sum: np.ndarray | None = None
    bank_top_idx: np.ndarray | None = None
    bank_top_sim: np.ndarray | None = None


@dataclass(frozen=True)
class _RowReductions:
    """What to compute per item row of a block (the row-wise half of :func:`scan_bank`)."""

    beta: float | None
    mean_topk: tuple[int, ...]
    neighbour_k: int | None
    columns: int
    dbsn: DbsnWeights | None = None

    @property
    def largest(self) -> int:
        """How many of each row's largest similarities the top-k means and neighbours need."""
        return min(self.columns, max((*self.mean_topk, self.neighbour_k or 0)))

    def run(
        self,
        sims: np.ndarray,
        lme: np.ndarray,
        means: dict[int, np.ndarray],
        near,
        dbsn: np.ndarray,
    ) -> None:
        """Write one chunk's reductions into the (chunk-sized) output views given."""
        if self.beta is not None:
            lme[:] = log_mean_exp(sims, self.beta)
        if self.dbsn is not None:
            dbsn[:] = dbsn_row_stat(sims, self.dbsn.log_v, self.dbsn.tau)
        if self.largest:
            self.finish(*_largest(sims, self.largest, need_idx=self.need_idx), means, near)

    @property
    def need_idx(self) -> bool:
        return self.neighbour_k is not None

    @cached_property
    def dbsn_shift(self) -> np.ndarray:
        """(N,) float32 ``τ·log v``, DBSN's column shift (empty: no DBSN term)."""
        if self.dbsn is None:
            return np.empty(0, np.float32)
        return (self.dbsn.tau * self.dbsn.log_v).astype(np.float32)

    def finish(
        self, vals: np.ndarray, idx: np.ndarray | None, means: dict[int, np.ndarray], near
    ) -> None:
        """The top-k means and neighbours from each row's ``largest`` values (and columns)."""
        for k in self.mean_topk:
            means[k][:] = _mean_of_largest(vals, min(k, self.columns))
        if self.neighbour_k is not None:
            near_idx, near_val = near
            k = min(self.neighbour_k, self.columns)
            if k < vals.shape[1]:
                keep = np.argpartition(vals, vals.shape[1] - k, axis=1)[:, -k:]
                vals, idx = (np.take_along_axis(a, keep, axis=1) for a in (vals, idx))
            near_idx[:], near_val[:] = idx, vals

    @cached_property
    def widths(self) -> np.ndarray:
        """The top-k means' widths (at most the row length), in ``mean_topk``'s order (the
        order of the ``means`` dicts, which hold each k once)."""
        return np.array([min(k, self.columns) for k in dict.fromkeys(self.mean_topk)], np.int64)

    def run_fused(
        self,
        sims: np.ndarray,
        first_row: int,
        lme: np.ndarray,
        means: dict[int, np.ndarray],
        near,
        dbsn: np.ndarray,
        col: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """:meth:`run` for float32 rows in one kernel call (:func:`fused.scan_rows`), which
        also updates ``col`` (each column's best value and row so far; empty arrays: none)."""
        rows, n = sims.shape
        k = self.largest
        groups = _GROUPS_PER_K * k if k and n // (_GROUPS_PER_K * k) >= 4 else 0
        cap = min(n // 4, _CANDIDATES_PER_K * k) if groups else 0
        tops = np.empty((2, rows), np.float32)
        sums = np.empty((2, rows))
        cand_val = np.empty((rows, cap), np.float32)
        cand_idx = np.empty((rows, cap), np.int64)
        count = np.empty(rows, np.int64)
        kmeans = np.zeros((rows, self.widths.size))  # overflowing rows: filled below
        tau = self.dbsn.tau if self.dbsn is not None else 1.0
        fused.scan_rows(
            sims, self.beta or 0.0, self.dbsn_shift, 1.0 / tau, groups, k, self.widths,
            min(self.neighbour_k or 0, n), first_row,
            tops[0], sums[0], tops[1], sums[1], *col, cand_val, cand_idx, count, kmeans,
        )  # fmt: skip
        if self.beta is not None:
            lme[:] = fused.log_of(tops[0], sums[0])
            near_one = sums[0] > _EXP_PATH_MAX_MEAN  # the expm1 path's rows (tiny β)
            if near_one.any():
                lme[near_one] = log_mean_exp(sims[near_one], self.beta)
        if self.dbsn is not None:
            dbsn[:] = fused.log_of(tops[1], sums[1], tau) if self.dbsn_shift.size else 0.0
        if not k:
            return
        if not groups:  # short rows: the numpy selection
            self.finish(*_largest(sims, k, need_idx=self.need_idx), means, near)
            return
        for m, out in enumerate(means.values()):
            out[:] = kmeans[:, m]
        if self.neighbour_k is not None:
            near_k = min(self.neighbour_k, n)
            near[0][:], near[1][:] = cand_idx[:, :near_k], cand_val[:, :near_k]
        over = np.flatnonzero(count < 0)  # too many candidates (ties): partitioned whole
        if over.size:
            sub_means = {kk: np.empty(over.size, out.dtype) for kk, out in means.items()}
            sub_near = tuple(np.empty((over.size, a.shape[1]), a.dtype) for a in near)
            self.finish(*_largest(sims[over], k, need_idx=self.need_idx), sub_means, sub_near)
            for kk, out in means.items():
                out[over] = sub_means[kk]
            for whole, part in zip(near, sub_near, strict=True):
                whole[over] = part


def _largest(sims: np.ndarray, k: int, *, need_idx: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The k largest values of each row (in no particular order) and, if asked, their columns.

    A partition of every whole row costs several passes over it; instead a lower bound of each
    row's k-th largest value is found first, and only the entries at or above it are
    partitioned (:func:`_candidates`), which after one pass are a few more than k per row."""
    n = sims.shape[1]
    if k >= n:
        return sims, np.broadcast_to(np.arange(n), sims.shape) if need_idx else None
    found = _candidates(sims, k)
    if found is not None:
        vals, idx = _top_of(*found, k)
        return vals, idx if need_idx else None
    if not need_idx:  # values only: a partition moves floats, no index array
        return np.partition(sims, n - k, axis=1)[:, n - k :], None
    idx = np.argpartition(sims, n - k, axis=1)[:, n - k :]
    return np.take_along_axis(sims, idx, axis=1), idx


def _top_of(vals: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row of candidate values (B, c ≥ k) and their columns."""
    width = vals.shape[1]
    if width > k:
        keep = np.argpartition(vals, width - k, axis=1)[:, width - k :]
        vals, idx = (np.take_along_axis(a, keep, axis=1) for a in (vals, idx))
    return vals, idx


#: Groups per top-k entry in :func:`_candidates` (more groups: a tighter bound, a larger
#: partition of the group maxima).
_GROUPS_PER_K = 4
#: Candidates per top-k entry the fused kernel keeps room for (about 1.2 are found on
#: distinct data; a row with more, e.g. heavy ties, is partitioned whole).
_CANDIDATES_PER_K = 8


def _candidates(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's entries at or above a lower bound of its k-th largest value, as (B, c) values
    and columns (rows with fewer than c padded with −inf at column 0), or None when the bound
    does not pay (short rows, or too many candidates: ties, adversarial orders).

    The bound: split the row's first ``m·L`` columns into m ≥ k disjoint groups of L (column
    j's group is j mod m: the maxima are an elementwise max of L contiguous slices); the k-th
    largest group maximum θ is at most the row's k-th largest value (those k maxima are k
    distinct entries ≥ θ), so every top-k entry is ≥ θ. One pass for the maxima, one for the
    comparison, and a partition of m values per row, instead of a partition of the row."""
    rows, n = sims.shape
    groups = _GROUPS_PER_K * k
    width = n // groups
    if width < 4 or rows == 0:
        return None
    maxima = sims[:, : groups * width].reshape(rows, width, groups).max(axis=1)
    theta = np.partition(maxima, groups - k, axis=1)[:, groups - k]
    flat = np.flatnonzero(sims >= theta[:, None])  # row-major: each row's columns in order
    r, c = np.divmod(flat, n)
    counts = np.bincount(r, minlength=rows)
    most = int(counts.max())
    if most * 4 > n:
        return None
    at = np.arange(r.size) - np.repeat(np.cumsum(counts) - counts, counts)
    vals = np.full((rows, most), -np.inf, sims.dtype)
    idx = np.zeros((rows, most), np.int64)
    vals[r, at], idx[r, at] = sims.ravel()[flat], c
    return vals, idx


def _mean_of_largest(vals: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k largest of each row of ``vals`` (which holds at least k columns)."""
    width = vals.shape[1]
    if k < width:
        vals = np.partition(vals, width - k, axis=1)[:, width - k :]
    return vals.mean(axis=1)


def scan_bank(
    items: np.ndarray,
    bank: np.ndarray,
    *,
    beta: float | None = None,
    mean_topk: tuple[int, ...] = (),
    neighbour_k: int | None = None,
    bank_topk: int | None = None,
    dbsn: DbsnWeights | None = None,
    rows: int | None = None,
) -> BankScan:
    """Compute the requested reductions of ``items · bankᵀ`` in row blocks (see :class:`BankScan`).

    items: (n, d), bank: (N, d), both L2-normalised floats; float16 items (or bank) are computed
    in float32 blocks (:func:`~service.algorithms.blocks.work_dtype`), and every result has the
    work dtype. ``rows``: rows per block (default: a 64 MiB block).
    """
    n, N = items.shape[0], bank.shape[0]
    dtype = work_dtype(np.promote_types(items.dtype, bank.dtype))
    if N == 0:
        return _empty_bank_scan(items, beta, mean_topk, neighbour_k, bank_topk, dbsn is not None)
    bank = bank.astype(dtype, copy=False)  # float16 storage: widened once, not per block
    rows = rows or block_rows(N, dtype.itemsize)
    chunk = block_rows(N, dtype.itemsize, CHUNK_BYTES)
    per_row = _RowReductions(beta, tuple(mean_topk), neighbour_k, N, dbsn)
    out = BankScan()
    lme = np.empty(n, dtype) if beta is not None else np.empty((n, 0), dtype)
    if beta is not None:
        out.log_mean_exp = lme
    dbsn_out = np.empty(n, dtype) if dbsn is not None else np.empty((n, 0), dtype)
    if dbsn is not None:
        out.dbsn = dbsn_out
    for k in mean_topk:
        out.topk_means[k] = np.empty(n, dtype)
    near_k = min(neighbour_k, N) if neighbour_k is not None else 0
    if neighbour_k is not None:
        out.neighbour_sum = np.empty(items.shape, dtype)
    top = _BankTop(N, min(bank_topk, n), dtype) if bank_topk is not None else None
    report = _progress.get()
    fuse = dtype == np.float32  # one kernel pass per row; float64 keeps the numpy reductions
    fused_best = fuse and top is not None and top.k == 1  # the column top-1 in the same pass
    # one block buffer for every product: a fresh 64 MiB block per product cost its page faults
    # (first-touch zeroing), ≈ 0.3× of the products' CPU time at 20k × 10k × 256
    buffer = np.empty((min(rows, n), N), dtype)
    for sl in row_blocks(n, rows):
        b = sl.stop - sl.start
        # (B, N) into the block buffer; BLAS reads bankᵀ in place
        sims = bank_product(widened(items[sl]).astype(dtype, copy=False), bank, out=buffer[:b])
        near_idx = np.empty((b, near_k), np.int64)
        near_val = np.empty((b, near_k), dtype)

        def reduce_part(part: slice, sims=sims, sl=sl, near_idx=near_idx, near_val=near_val):
            at = slice(sl.start + part.start, sl.start + part.stop)
            means = {k: out.topk_means[k][at] for k in mean_topk}
            near = (near_idx[part], near_val[part])
            if not fuse:
                return per_row.run(sims[part], lme[at], means, near, dbsn_out[at])
            col = _column_start(N if fused_best else 0)
            per_row.run_fused(sims[part], at.start, lme[at], means, near, dbsn_out[at], col)
            return col

        # fused: a few large parts (the kernel works row by row in cache), each with its own
        # column maxima; numpy: cache-sized chunks, each pass over a chunk then stays in cache;
        # a small block (a gallery change's few rows) in one part on this thread: handing it
        # to the pool cost more than the work, waiting for cores that requests share
        spread = -(-b // FUSED_PARTS) if fuse else chunk
        parts = row_blocks(b, b if b * N <= INLINE_ENTRIES else spread)
        cols = parallel_map(reduce_part, parts)
        if out.neighbour_sum is not None:
            out.neighbour_sum[sl] = _sparse_rows(near_idx, near_val, N).tocsc() @ bank
        if fused_best:
            top.merge_best(*_merge_columns(cols))
        elif top is not None:
            top.update(sims, sl.start)
        if report is not None:
            report(b * N)
    if top is not None:
        out.bank_top_idx, out.bank_top_sim = top.idx, top.sim
    return out


def _column_start(columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Column maxima before any row (the lowest float32, so any similarity beats it) and their
    rows, for :func:`fused.scan_rows` (``columns`` = 0: no column maxima)."""
    return np.full(columns, np.finfo(np.float32).min, np.float32), np.zeros(columns, np.int64)


def _merge_columns(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One block's column maxima and rows from its parts' (in row order: the earlier row keeps
    a tie, as within a part)."""
    best, rows = parts[0]
    for value, row in parts[1:]:
        better = value > best
        best, rows = np.where(better, value, best), np.where(better, row, rows)
    return best, rows


def _empty_bank_scan(
    items: np.ndarray,
    beta: float | None,
    mean_topk: tuple[int, ...],
    neighbour_k: int | None,
    bank_topk: int | None,
    dbsn: bool,
) -> BankScan:
    """The scan against an empty bank (a live query bank with no rows yet): it has no
    statistics, so every reduction is the neutral one (0: no bias, no push) and no bank item
    activates anything."""
    n, dtype = items.shape[0], work_dtype(items.dtype)
    out = BankScan(topk_means={k: np.zeros(n, dtype) for k in mean_topk})
    if beta is not None:
        out.log_mean_exp = np.zeros(n, dtype)
    if dbsn:
        out.dbsn = np.zeros(n, dtype)
    if neighbour_k is not None:
        out.neighbour_sum = np.zeros(items.shape, dtype)
    if bank_topk is not None:
        k = min(bank_topk, n)
        out.bank_top_idx, out.bank_top_sim = np.empty((0, k), np.int64), np.empty((0, k), dtype)
    return out


class _BankTop:
    """Each bank item's k best item rows so far, updated block by block (lower row wins ties)."""

    def __init__(self, columns: int, k: int, dtype: np.dtype) -> None:
        self.k = k
        self.idx = np.empty((columns, 0), np.int64)
        self.sim = np.empty((columns, 0), dtype)

    def update(self, sims: np.ndarray, first_row: int) -> None:
        """Account for the block ``sims`` (B, N) of item rows ``first_row, …``."""
        if self.k == 1:
            self._update_best(sims, first_row)
        elif self.idx.shape[1] < self.k:  # not k rows seen yet: every column changes
            blk_idx, blk_sim = self._block_topk(sims)
            self.idx, self.sim = merge_topk(
                self.idx, self.sim, blk_idx + first_row, blk_sim, self.k
            )
        else:
            self._update_above(sims, first_row)

    def _block_topk(self, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each column's top-k of the block, in column chunks on the block threads."""
        chunks = row_blocks(sims.shape[1], block_rows(sims.shape[0], sims.itemsize, CHUNK_BYTES))
        parts = parallel_map(
            lambda c: topk_desc(np.ascontiguousarray(sims[:, c].T), self.k), chunks
        )
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _update_above(self, sims: np.ndarray, first_row: int) -> None:
        """k > 1 once k rows are in: only entries above a column's current k-th best can enter
        it (a tie keeps the earlier, lower row), and after the first blocks those are few
        (about k·B/rows seen per column), so one comparison pass replaces a partition of the
        whole block. The candidates are ranked per column and merged into those columns only."""
        found = self._candidates(sims)
        if found is None:  # float64, or too many candidates for the kernel's buffers
            rows, cols = np.nonzero(sims > self.sim[:, -1])
            vals = sims[rows, cols]
        else:
            rows, cols, vals = found
        if not rows.size:
            return
        order = np.lexsort((rows, -vals, cols))  # by column, best first, lower row on ties
        rows, cols, vals = rows[order], cols[order], vals[order]
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
        rank = np.arange(cols.size) - np.repeat(starts, np.diff(np.r_[starts, cols.size]))
        keep = rank < self.k  # a column's k best candidates are all it can take
        touched = cols[starts]
        at = np.searchsorted(touched, cols[keep])
        cand_idx = np.zeros((touched.size, self.k), np.int64)
        cand_sim = np.full((touched.size, self.k), -np.inf, self.sim.dtype)  # never chosen:
        cand_idx[at, rank[keep]] = rows[keep] + first_row  # each column has k real entries
        cand_sim[at, rank[keep]] = vals[keep]
        self.idx[touched], self.sim[touched] = merge_topk(
            self.idx[touched], self.sim[touched], cand_idx, cand_sim, self.k
        )

    #: The share of a block's entries the kernel's candidate buffers hold (12 bytes each: 1/16
    #: of a 64 MiB block is 12 MiB). A column's k-th best after r rows is beaten by about k/r of
    #: the entries, so only the first blocks of a scan, above it, take the numpy path.
    CANDIDATE_SHARE = 1 / 16

    def _candidates(self, sims: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """(rows, cols, vals) of the entries above their column's k-th best, in row-major
        order, found by :func:`fused.above_floor` in row parts on the block threads (numpy's
        comparison, ``nonzero`` and gather took half of a 100k × 50k precompute); None for a
        float64 block or one with more candidates than the buffers hold."""
        if sims.dtype != np.float32 or not sims.flags.c_contiguous:
            return None
        floor = np.maximum(self.sim[:, -1], np.finfo(np.float32).min).astype(np.float32)

        def run(part: slice) -> tuple[np.ndarray, ...] | None:
            cap = int((part.stop - part.start) * sims.shape[1] * self.CANDIDATE_SHARE)
            rows, cols = np.empty(cap, np.int32), np.empty(cap, np.int32)
            vals = np.empty(cap, np.float32)
            count = fused.above_floor(sims[part], floor, rows, cols, vals)
            if count < 0:
                return None
            return rows[:count] + part.start, cols[:count], vals[:count]

        b = sims.shape[0]
        found = parallel_map(run, row_blocks(b, max(1, -(-b // FUSED_PARTS))))
        if any(part is None for part in found):
            return None
        return tuple(map(np.concatenate, zip(*found, strict=True)))

    def _update_best(self, sims: np.ndarray, first_row: int) -> None:
        """k = 1: a column maximum (one cache-friendly pass); the argmax only where it improves."""
        best = sims.max(axis=0)
        cols = np.flatnonzero(best > self.sim[:, 0]) if self.sim.shape[1] else slice(None)
        rows = np.zeros(sims.shape[1], np.int64)
        if best[cols].size:
            # first row reaching the column maximum, in column chunks on the block threads so
            # each gather stays small (and both cores share the early blocks' full gathers)
            at = np.arange(sims.shape[1])[cols]
            chunks = row_blocks(at.size, block_rows(sims.shape[0], 1, CHUNK_BYTES))
            rows[at] = np.concatenate(
                parallel_map(lambda c: (sims[:, at[c]] == best[at[c]]).argmax(axis=0), chunks)
            )
        self.merge_best(best, rows + first_row)

    def merge_best(self, best: np.ndarray, rows: np.ndarray) -> None:
        """k = 1: account for a block whose column maxima are ``best`` (N,) at item ``rows``
        (the block's first such row); an earlier block keeps a tie."""
        if self.idx.shape[1] == 0:
            self.idx, self.sim = rows[:, None].copy(), best[:, None].astype(self.sim.dtype)
            return
        cols = np.flatnonzero(best > self.sim[:, 0])
        self.idx[cols, 0], self.sim[cols, 0] = rows[cols], best[cols]


def _sparse_rows(idx: np.ndarray, val: np.ndarray, columns: int) -> sparse.csr_array:
    """A (B, columns) CSR matrix with ``val[i, j]`` at ``(i, idx[i, j])``: the LocalAdj rows."""
    b, k = idx.shape
    indptr = np.arange(0, b * k + 1, k)
    return sparse.csr_array((val.ravel(), idx.ravel(), indptr), shape=(b, columns))
