"""One blocked pass of gallery items against a bank, computing every per-item reduction at once.

The expensive part of InvGC and of every DBNorm statistic is the similarity matrix
``S = items · bankᵀ``. This module computes it one block of rows at a time and derives from each
block everything that is asked for (log-mean-exp at some β, mean of the top-k similarities,
the LocalAdj neighbour sum, each bank item's best gallery items), so the product is computed
once per bank and never held whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from service.algorithms.blocks import block_rows, log_mean_exp, merge_topk, row_blocks, topk_desc


@dataclass
class BankScan:
    """Reductions of ``S = items · bankᵀ`` (items: n×d, bank: N×d).

    log_mean_exp: (n,) ``log mean_b exp(β s(b, g))`` (log Z minus log N), if β was given.
    topk_means: {k: (n,) mean of the k largest s(b, g) over b}.
    neighbour_sum: (n, d) ``Σ_{b in top-K of g} s(g, b) · b`` (LocalAdj), if K was given.
    bank_top_idx / bank_top_sim: (N, k) each bank item's k most similar items, best first
        (row indices into ``items``), if k was given: the DIS activation set's raw material.
    """

    log_mean_exp: np.ndarray | None = None
    topk_means: dict[int, np.ndarray] = field(default_factory=dict)
    neighbour_sum: np.ndarray | None = None
    bank_top_idx: np.ndarray | None = None
    bank_top_sim: np.ndarray | None = None


def scan_bank(
    items: np.ndarray,
    bank: np.ndarray,
    *,
    beta: float | None = None,
    mean_topk: tuple[int, ...] = (),
    neighbour_k: int | None = None,
    bank_topk: int | None = None,
    rows: int | None = None,
) -> BankScan:
    """Compute the requested reductions of ``items · bankᵀ`` in row blocks (see :class:`BankScan`).

    items: (n, d), bank: (N, d), both L2-normalised and of one float dtype.
    """
    n, N = items.shape[0], bank.shape[0]
    dtype = items.dtype
    rows = rows or block_rows(N, dtype.itemsize)
    out = BankScan()
    if beta is not None:
        out.log_mean_exp = np.empty(n, dtype)
    for k in mean_topk:
        out.topk_means[k] = np.empty(n, dtype)
    if neighbour_k is not None:
        out.neighbour_sum = np.empty_like(items)
    if bank_topk is not None:
        kk = min(bank_topk, n)
        out.bank_top_idx = np.empty((N, 0), np.int64)
        out.bank_top_sim = np.empty((N, 0), dtype)
    bank_t = np.ascontiguousarray(bank.T)
    for sl in row_blocks(n, rows):
        sims = items[sl] @ bank_t  # (B, N)
        if out.log_mean_exp is not None:
            out.log_mean_exp[sl] = log_mean_exp(beta * sims)
        if mean_topk or neighbour_k is not None:
            largest = max((*mean_topk, neighbour_k or 0))
            top_idx, top_val = topk_desc(sims, min(largest, N))
            for k in mean_topk:
                out.topk_means[k][sl] = top_val[:, : min(k, N)].mean(axis=1)
            if neighbour_k is not None:
                out.neighbour_sum[sl] = (
                    _sparse_rows(top_idx[:, :neighbour_k], top_val[:, :neighbour_k], N) @ bank
                )
        if bank_topk is not None:
            blk_idx, blk_sim = topk_desc(np.ascontiguousarray(sims.T), kk)
            out.bank_top_idx, out.bank_top_sim = merge_topk(
                out.bank_top_idx, out.bank_top_sim, blk_idx + sl.start, blk_sim, kk
            )
    return out


def _sparse_rows(idx: np.ndarray, val: np.ndarray, columns: int) -> sparse.csr_array:
    """A (B, columns) CSR matrix with ``val[i, j]`` at ``(i, idx[i, j])``: the LocalAdj rows."""
    b, k = idx.shape
    indptr = np.arange(0, b * k + 1, k)
    return sparse.csr_array((val.ravel(), idx.ravel(), indptr), shape=(b, columns))
