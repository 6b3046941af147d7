"""DBSN's bank statistic: Sinkhorn column weights between the gallery bank and the query bank.

SPEC.md "DBSN": rows are the gallery bank (R items, marginal ``a = 1/R``), columns the query bank
(C items, ``b = 1/C``), kernel ``K = exp(−(1 − s)/τ)``. From ``u = 1/R``, ``v = 1/C`` each of T
iterations sets ``v ← b / (Kᵀu)`` then ``u ← a / (K v)``. Everything is kept as logarithms and
summed in float64: τ = 0.01 puts ``K`` at ``exp(−200)`` for s = −1, below float32's range.

Only ``log v`` is kept (a per-bank-set statistic); a gallery item's ``u(g)`` is one more row
update, computed per item by the query-bank scan (:mod:`service.algorithms.scan`) as the stat
column ``τ · logsumexp_b(log v_b + s(g, b)/τ)``.

Blocked: the R×C similarity matrix is never built whole when it is large. Each pass over the
gallery-bank rows does, per row block, the u-update of those rows with the current v and
accumulates the column log-sum-exp that gives the next v, so T iterations take T passes (the
first only accumulates: u starts uniform). If the similarities fit
``keep_bytes`` they are computed once and reused by every pass, otherwise each pass recomputes
its block products (BLAS, the same cost as one scan of the gallery bank against the query bank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.algorithms import fused
from service.algorithms.blocks import FUSED_PARTS, block_rows, parallel_map, row_blocks
from service.algorithms.validation import check_count, check_positive

#: Keep the float32 similarity blocks across passes when R×C·4 bytes fit this budget.
KEEP_SIMILARITIES_BYTES = 256 * 1024 * 1024
#: Rows of one work block (bounds each temporary to ~32 MiB per block).
_WORK_BYTES = 32 * 1024 * 1024


def scaled_logsumexp(y: np.ndarray, tau: float, axis: int) -> np.ndarray:
    """float64 ``τ · log Σ exp(y / τ)`` along ``axis``, the exponentials in ``y``'s dtype.

    Why in similarity units (``y = s + τ·log w``, O(1)) rather than ``s/τ + log w`` (O(1/τ)):
    the rounding of ``y`` is then a few ulps of a similarity, carried to the result
    unamplified, so the exponentials (the whole cost: one per similarity) run in the block's
    float32 without float64 copies of it. The maximum is subtracted first (no overflow for any
    τ); the logarithm is float64. Error for float32 ``y``: about ``eps32·(|y| + τ·log2 n)``
    absolute (the rounding of ``y``, then the exponentials' and the pairwise sum's relative
    rounding, which the τ·log turns into τ times that)."""
    top = y.max(axis=axis, keepdims=True)
    work = np.subtract(y, top)
    np.multiply(work, work.dtype.type(1.0 / tau), out=work)
    np.exp(work, out=work)
    total = work.sum(axis=axis).astype(np.float64)  # pairwise: relative error ~eps·log2(n)
    return np.squeeze(top, axis=axis).astype(np.float64) + tau * np.log(total)


def _shifted(sims: np.ndarray, shift: np.ndarray, axis: int) -> np.ndarray:
    """``sims + shift`` broadcast along ``axis`` (shift float64, cast to the block's dtype)."""
    shift = shift.astype(sims.dtype, copy=False)
    return sims + (shift[None, :] if axis == 1 else shift[:, None])


def sinkhorn_log_v(
    gallery_bank: np.ndarray,
    query_bank: np.ndarray,
    tau: float,
    iterations: int,
    *,
    rows: int | None = None,
    keep_bytes: int = KEEP_SIMILARITIES_BYTES,
) -> np.ndarray:
    """(C,) float64 ``log v`` after ``iterations`` Sinkhorn iterations (see the module doc).

    gallery_bank: (R, d) rows, query_bank: (C, d) columns, both L2-normalised. ``rows``: rows
    per block (default: a work block of ~32 MiB), ``keep_bytes``: see the module doc.

    Every log-sum-exp is taken in similarity units (:func:`scaled_logsumexp`): with
    ``τ·log u = q + α`` and ``τ·log v = p + γ``, ``p = −τLSE_r((s + q)/τ)`` and
    ``q = −τLSE_c((s + p)/τ)`` are the O(1) per-column/row parts the blocks see, and
    α, γ the constants (``τ log a``, ``τ log b`` and the 1 of ``log K = (s − 1)/τ``).
    """
    check_positive("dbsn_tau", tau)
    check_count("dbsn_iterations", iterations)
    r, c = gallery_bank.shape[0], query_bank.shape[0]
    if c == 0:  # an empty (live) query bank: nothing to transport to, the term is absent
        return np.empty(0)
    itemsize = gallery_bank.dtype.itemsize
    log_a, log_b = -math.log(r), -math.log(c)
    rows = rows or block_rows(c, itemsize, _WORK_BYTES)
    blocks = list(row_blocks(r, rows))
    kept: list[np.ndarray] | None = [] if r * c * itemsize <= keep_bytes else None

    buffer = np.empty((min(rows, r), c), np.promote_types(gallery_bank.dtype, query_bank.dtype))

    def block_sims(i: int, sl: slice) -> np.ndarray:
        """(B, C) similarities of block i (products reused if kept, else computed into one
        reused buffer: no page faults of a fresh block per product)."""
        if kept is not None and i < len(kept):
            return kept[i]
        if kept is None:
            return np.matmul(gallery_bank[sl], query_bank.T, out=buffer[: sl.stop - sl.start])
        sims = gallery_bank[sl] @ query_bank.T
        kept.append(sims)
        return sims

    q_known, alpha, gamma = False, tau * log_a, 0.0  # u = a at the start: q = 0
    p = np.empty(c)
    for _ in range(iterations):
        if q_known:
            alpha = tau * log_a + 1.0 - gamma
        columns = _ColumnLse(c, gallery_bank.dtype, tau)  # column τ·LSE of s + q

        for i, sl in enumerate(blocks):
            sims = block_sims(i, sl)

            def piece(job: tuple[int, slice], sims=sims, p=p, q_known=q_known, acc=columns):
                slot, part = job
                x = sims[part]
                if q_known:  # the rows' u-update with the current v
                    q = -scaled_logsumexp(_shifted(x, p, axis=1), tau, axis=1)
                    x = _shifted(x, q, axis=0)
                acc.add(slot, x)

            b = sims.shape[0]
            parallel_map(piece, enumerate(row_blocks(b, -(-b // _ColumnLse.SLOTS))))
        p = -columns.result()
        gamma = tau * log_b + 1.0 - alpha
        q_known = True
    return (p + gamma) / tau


class _ColumnLse:
    """Running column ``τ·LSE`` over row parts added in any order, one accumulator per
    concurrent part (slot), so memory stays O(slots × C) whatever the number of blocks.

    float32 parts go through the fused kernel (:func:`fused.column_lse_update`: a running
    maximum and float64 sum per column); float64 ones through numpy, each part's τ·LSE merged
    with ``logaddexp`` (float64 throughout)."""

    #: Parts per block, each with its accumulator.
    SLOTS = FUSED_PARTS

    def __init__(self, columns: int, dtype: np.dtype, tau: float) -> None:
        self.tau = tau
        self.fused = dtype == np.float32
        shape = (self.SLOTS, columns)
        self.top = np.full(shape, np.finfo(np.float32).min if self.fused else -np.inf, dtype)
        self.total = np.zeros(shape)

    def add(self, slot: int, x: np.ndarray) -> None:
        """Add the rows ``x`` (B, C) to accumulator ``slot`` (one caller per slot at a time)."""
        tau = self.tau
        if self.fused:
            fused.column_lse_update(x, 1.0 / tau, self.top[slot], self.total[slot])
        else:
            part = scaled_logsumexp(x, tau, axis=0)
            self.top[slot] = tau * np.logaddexp(self.top[slot] / tau, part / tau)

    def result(self) -> np.ndarray:
        """(C,) float64 column τ·LSE of every row added (unused slots contribute nothing)."""
        if self.fused:
            used = self.total[:, 0] > 0
            lse = fused.log_of(self.top[used], self.total[used], self.tau)
        else:
            lse = self.top[np.isfinite(self.top[:, 0])]
        return scaled_logsumexp(lse, self.tau, axis=0)


@dataclass(frozen=True)
class DbsnWeights:
    """A solved bank set: ``log_v`` (C,) float64 at temperature ``tau`` (the scan's input)."""

    log_v: np.ndarray
    tau: float


def dbsn_row_stat(sims: np.ndarray, log_v: np.ndarray, tau: float) -> np.ndarray:
    """(B,) float64 ``τ · logsumexp_b(log v_b + s(g, b)/τ)`` of a block of similarities (B, C),
    the exponentials in the block's dtype (:func:`scaled_logsumexp` and its error bound).
    The item's score is ``s(q, g) − stat + 1 − τ log R`` = ``s + τ log u(g)``.
    An empty query bank (no columns) has no term: 0."""
    if log_v.size == 0:
        return np.zeros(sims.shape[0])
    return scaled_logsumexp(_shifted(sims, tau * log_v, axis=1), tau, axis=1)
