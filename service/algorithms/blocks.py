"""Blocked linear algebra: bounded memory for n×N similarity work.

Every pass over a gallery against a bank (or queries) computes one block of rows at a time with
a BLAS matrix product, reduces it (top-k, log-sum-exp, ...) and drops it, so peak memory is
``block_rows × N`` floats whatever n is.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Memory one similarity block may take (bytes); 64 MiB keeps BLAS efficient and RSS small.
DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024


def block_rows(columns: int, itemsize: int = 4, budget: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that a ``rows × columns`` block fits in ``budget`` bytes."""
    return max(1, budget // max(1, columns * itemsize))


def row_blocks(n: int, rows: int) -> Iterator[slice]:
    """Consecutive slices of at most ``rows`` rows covering ``range(n)``."""
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def topk_desc(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of each row, best first.

    scores: (m, n). Returns (m, min(k, n)) int64 indices and values. Uses ``argpartition``
    (O(n) per row) and sorts only the k winners. Ties are broken by the lower index, so the
    result is deterministic.
    """
    m, n = scores.shape
    k = min(k, n)
    if k == 0:
        return np.empty((m, 0), np.int64), np.empty((m, 0), scores.dtype)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), (m, n))
    vals = np.take_along_axis(scores, part, axis=1)
    # sort by value descending, then by index ascending (lexsort: last key is primary)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64, copy=False)
    return idx, np.take_along_axis(vals, order, axis=1)


def merge_topk(
    idx_a: np.ndarray, val_a: np.ndarray, idx_b: np.ndarray, val_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two per-row top lists (indices into one space) into the top k, best first."""
    idx = np.concatenate([idx_a, idx_b], axis=1)
    val = np.concatenate([val_a, val_b], axis=1)
    sel, top = topk_desc(val, k)
    return np.take_along_axis(idx, sel, axis=1), top


def log_mean_exp(x: np.ndarray) -> np.ndarray:
    """``log(mean(exp(x)))`` per row, stable for any magnitude of x.

    Shifts by the row maximum (no overflow for large β) and uses ``expm1``/``log1p`` with a
    float64 mean, so tiny β (all terms ≈ 1) keeps its precision too.
    """
    top = x.max(axis=1, keepdims=True)
    mean = np.mean(np.expm1(x - top), axis=1, dtype=np.float64)
    return (top[:, 0] + np.log1p(mean)).astype(x.dtype, copy=False)
