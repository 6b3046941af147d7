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
first only accumulates: u starts uniform). If the float32 similarities fit
``keep_bytes`` they are computed once and reused by every pass, otherwise each pass recomputes
its block products (BLAS, the same cost as one scan of the gallery bank against the query bank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.algorithms.blocks import CHUNK_BYTES, block_rows, parallel_map, row_blocks
from service.algorithms.validation import check_count, check_positive

#: Keep the float32 similarity blocks across passes when R×C·4 bytes fit this budget.
KEEP_SIMILARITIES_BYTES = 256 * 1024 * 1024
#: Rows of one float64 work block (bounds the temporaries to ~32 MiB per block).
_WORK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class _ColumnLSE:
    """A running column-wise log-sum-exp: ``max`` and ``sum exp(x − max)`` per column."""

    top: np.ndarray
    total: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> _ColumnLSE:
        top = x.max(axis=0)
        return cls(top, np.exp(x - top).sum(axis=0))

    def merge(self, other: _ColumnLSE) -> _ColumnLSE:
        top = np.maximum(self.top, other.top)
        total = self.total * np.exp(self.top - top) + other.total * np.exp(other.top - top)
        return _ColumnLSE(top, total)

    def value(self) -> np.ndarray:
        return self.top + np.log(self.total)


def row_logsumexp(x: np.ndarray) -> np.ndarray:
    """``log Σ_j exp(x_ij)`` per row, float64, stable for any magnitude."""
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


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
    per block (default: a float64 work block of ~32 MiB), ``keep_bytes``: see the module doc.
    """
    check_positive("dbsn_tau", tau)
    check_count("dbsn_iterations", iterations)
    r, c = gallery_bank.shape[0], query_bank.shape[0]
    if c == 0:  # an empty (live) query bank: nothing to transport to, the term is absent
        return np.empty(0)
    log_a, log_b = -math.log(r), -math.log(c)
    rows = rows or block_rows(c, 8, _WORK_BYTES)
    blocks = list(row_blocks(r, rows))
    kept: list[np.ndarray] | None = [] if r * c * 4 <= keep_bytes else None
    inv_tau = 1.0 / tau
    chunk = block_rows(c, 8, CHUNK_BYTES)  # rows of one thread's share of a block

    def block_logk(i: int, sl: slice) -> np.ndarray:
        """(B, C) float64 ``log K = (s − 1)/τ`` of block i (products reused if kept)."""
        if kept is not None and i < len(kept):
            sims = kept[i]
        else:
            sims = gallery_bank[sl] @ query_bank.T
            if kept is not None:
                kept.append(sims)
        return (sims.astype(np.float64) - 1.0) * inv_tau

    log_v: np.ndarray | None = None
    for _ in range(iterations):
        acc: _ColumnLSE | None = None
        for i, sl in enumerate(blocks):
            log_k = block_logk(i, sl)

            def part(p: slice, log_k=log_k, log_v=log_v) -> _ColumnLSE:
                x = log_k[p]
                if log_v is None:  # first iteration: u = a, uniform
                    log_u = np.full(x.shape[0], log_a)
                else:  # u ← a / (K v) for these rows, with the current v
                    log_u = log_a - row_logsumexp(x + log_v)
                return _ColumnLSE.of(x + log_u[:, None])

            for piece in parallel_map(part, row_blocks(log_k.shape[0], chunk)):
                acc = piece if acc is None else acc.merge(piece)
        assert acc is not None
        log_v = log_b - acc.value()  # v ← b / (Kᵀu)
    assert log_v is not None
    return log_v


@dataclass(frozen=True)
class DbsnWeights:
    """A solved bank set: ``log_v`` (C,) float64 at temperature ``tau`` (the scan's input)."""

    log_v: np.ndarray
    tau: float


def dbsn_row_stat(sims: np.ndarray, log_v: np.ndarray, tau: float) -> np.ndarray:
    """(B,) ``τ · logsumexp_b(log v_b + s(g, b)/τ)`` of a block of similarities (B, C), summed
    in float64. The item's score is ``s(q, g) − stat + 1 − τ log R`` = ``s + τ log u(g)``.
    An empty query bank (no columns) has no term: 0."""
    if log_v.size == 0:
        return np.zeros(sims.shape[0])
    x = sims.astype(np.float64) * (1.0 / tau) + log_v
    return tau * row_logsumexp(x)
