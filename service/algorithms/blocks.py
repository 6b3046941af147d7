"""Blocked linear algebra: bounded memory for n×N similarity work.

Every pass over a gallery against a bank (or queries) computes one block of rows at a time with
a BLAS matrix product, reduces it (top-k, log-sum-exp, ...) and drops it, so peak memory is
``block_rows × N`` floats whatever n is. Reductions that BLAS does not parallelise run on
:func:`parallel_map`'s threads (numpy releases the GIL in its loops), over row chunks small
enough to stay in cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from service.algorithms import fused

#: Memory one similarity block may take (bytes); 64 MiB keeps BLAS efficient and RSS small.
DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024
#: Memory a float16 block may take once widened to float32 (each thread reuses one buffer of
#: this size: small enough to stay in the CPU cache between the widening and the product).
WIDEN_BYTES = 8 * 1024 * 1024
#: Blocks of at most this many entries are reduced on the calling thread: below about a
#: millisecond of work, handing parts to the pool costs more than it saves.
INLINE_ENTRIES = 1 << 20
#: Memory one reduction chunk may take: a few passes over it stay in the CPU cache.
CHUNK_BYTES = 1024 * 1024
#: Parts a block is split into for the fused kernels (service/algorithms/fused.py), which read
#: each row once wherever it lies: two per core, so a core slowed by other work delays less.
FUSED_PARTS = 2 * (os.cpu_count() or 1)
#: log_mean_exp's fast path (plain ``exp``) is as precise as ``expm1`` within a factor
#: 1/(1 − mean) ≤ 16 when the mean of ``exp(x − max)`` is at most this; rows above it (all terms
#: close to 1, e.g. β ≈ 1e-3) take the ``expm1`` path.
_EXP_PATH_MAX_MEAN = 1 - 1 / 16

T = TypeVar("T")
R = TypeVar("R")
_pool: ThreadPoolExecutor | None = None


def work_dtype(stored: np.dtype) -> np.dtype:
    """The dtype blocks are computed in for arrays stored as ``stored``: float16 storage (half
    the memory of a large gallery) is widened to float32 block by block, exactly (every
    float16 is a float32), so results are exact for the stored values; wider types stay."""
    return np.promote_types(stored, np.float32)


def widened(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``block`` in its work dtype, explicitly before a product: numpy multiplies float32 by
    float16 without BLAS (50–80× slower than widening first). float16 is widened by the fused
    kernel (10× numpy's cast), into ``out`` if given; float32 blocks pass through uncopied."""
    if block.dtype == np.float16:
        return fused.widen_half(block, out)
    return block.astype(work_dtype(block.dtype), copy=False)


_scratch = threading.local()


def product_with(queries: np.ndarray, block: np.ndarray) -> np.ndarray:
    """``queries @ blockᵀ`` in the work dtype, a fresh array. A float16 block (at most
    :data:`WIDEN_BYTES` widened) is widened into this thread's reused buffer: a fresh buffer
    per block cost as much in page faults as the widening itself."""
    if block.dtype != np.float16:
        return queries @ widened(block).T
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < block.size:
        buffer = _scratch.buffer = np.empty(block.size, np.float32)
    return queries @ widened(block, buffer[: block.size].reshape(block.shape)).T


def block_rows(columns: int, itemsize: int = 4, budget: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that a ``rows × columns`` block fits in ``budget`` bytes."""
    return max(1, budget // max(1, columns * itemsize))


def row_blocks(n: int, rows: int) -> Iterator[slice]:
    """Consecutive slices of at most ``rows`` rows covering ``range(n)``."""
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


#: Products with at most this many rows skip BLAS (see :func:`bank_product`): on the busy
#: cores, numpy's loop row by row still beat BLAS at 16 rows, not at 32 (docs/performance.md).
FEW_ROWS = 16


def bank_product(items: np.ndarray, bank: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``items @ bank.T`` (B, N), both of one dtype, into ``out`` if given (a reused buffer).

    A few rows (one-item gallery changes) are computed on this thread, not by BLAS: OpenBLAS
    splits even a one-row product over all its threads and waits for each to get a core, which
    on two cores shared with other work took 17 ms (p50) for 1 × 384 · 384 × 10k against
    0.7 ms on one thread. float32 rows go to the fused kernel (:func:`fused.few_rows_product`),
    others to numpy's loop row by row. Larger blocks are BLAS's."""
    if items.shape[0] > FEW_ROWS:
        return np.matmul(items, bank.T, out=out)
    if out is None:
        out = np.empty((items.shape[0], bank.shape[0]), np.result_type(items, bank))
    if items.dtype == bank.dtype == out.dtype == np.float32 and out.flags.c_contiguous:
        fused.few_rows_product(np.ascontiguousarray(items), np.ascontiguousarray(bank), out)
        return out
    for row, target in zip(items, out, strict=True):
        np.einsum("d,nd->n", row, bank, out=target)
    return out


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on one thread per CPU (in order; exceptions propagate).

    For numpy work that releases the GIL (ufuncs, reductions, partitions) on data that
    different items never share; a single item runs inline.
    """
    items = list(items)
    if len(items) <= 1 or (os.cpu_count() or 1) == 1:
        return [fn(x) for x in items]
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(os.cpu_count(), thread_name_prefix="hubless-blocks")
    return list(_pool.map(fn, items))


def _topk_of_negated(neg: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_desc` of ``-neg``, given ``neg`` (the negation a caller got for free)."""
    m, n = neg.shape
    k = min(k, n)
    if k == 0:
        return np.empty((m, 0), np.int64), np.empty((m, 0), neg.dtype)
    if n == 1:  # one entry a row (a one-item batch's bank top-k): nothing to rank
        return np.zeros((m, 1), np.int64), np.negative(neg)
    if k < n:
        part = np.argpartition(neg, k - 1, axis=1)[:, :k]
        _lowest_index_ties(neg, part)
    else:
        part = np.broadcast_to(np.arange(n), (m, n))
    neg_vals = np.take_along_axis(neg, part, axis=1)
    # sort by value descending, then by index ascending (lexsort: last key is primary)
    order = np.lexsort((part, neg_vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64, copy=False)
    return idx, np.negative(np.take_along_axis(neg_vals, order, axis=1))


def _lowest_index_ties(neg: np.ndarray, part: np.ndarray) -> None:
    """Make ``part`` (argpartition's k winners of each row of ``neg``) take the lowest-index
    members of a tie straddling the k-th place, in place.

    argpartition picks arbitrary tie members; one counting pass finds the rows where more than
    k entries reach the k-th value (≈ 10% of the partition's cost), and only those rows (rare
    outside degenerate data) are redone in Python.
    """
    k = part.shape[1]
    kth = np.take_along_axis(neg, part, axis=1).max(axis=1, keepdims=True)
    for row in np.flatnonzero((neg <= kth).sum(axis=1) > k):
        better = np.flatnonzero(neg[row] < kth[row])
        tied = np.flatnonzero(neg[row] == kth[row])[: k - better.size]
        part[row] = np.concatenate([better, tied])


def topk_desc(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of each row, best first.

    scores: (m, n). Returns (m, min(k, n)) int64 indices and values. Uses ``argpartition``
    (O(n) per row) and sorts only the k winners. Ties are broken by the lower index, so the
    result is deterministic.
    """
    return _topk_of_negated(np.negative(scores), k)


def merge_topk(
    idx_a: np.ndarray, val_a: np.ndarray, idx_b: np.ndarray, val_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two per-row top lists (indices into one space) into the top k, best first."""
    idx = np.concatenate([idx_a, idx_b], axis=1)
    val = np.concatenate([val_a, val_b], axis=1)
    sel, top = topk_desc(val, k)
    return np.take_along_axis(idx, sel, axis=1), top


def log_mean_exp(x: np.ndarray, scale: float | None = None) -> np.ndarray:
    """``log(mean(exp(scale · x)))`` per row (scale defaults to 1), stable for any magnitude.

    Shifts by the row maximum (no overflow for large β). Rows whose shifted terms are not all
    close to 1 use the vectorised ``exp`` (3-4× faster than ``expm1``); the others (tiny β, where
    ``exp`` would lose the digits that matter) use ``expm1``/``log1p`` with a float64 mean.
    ``x`` is never modified.
    """
    work = x.copy() if scale is None else np.multiply(x, x.dtype.type(scale))
    top = work.max(axis=1, keepdims=True)
    np.subtract(work, top, out=work)
    np.exp(work, out=work)
    mean = work.sum(axis=1).astype(np.float64) / max(1, x.shape[1])
    near_one = mean > _EXP_PATH_MAX_MEAN
    out = np.log(mean, out=mean)
    if near_one.any():  # recompute those rows' shifted terms (bitwise as above) for expm1
        rows = x[near_one] if scale is None else np.multiply(x[near_one], x.dtype.type(scale))
        shifted = np.subtract(rows, top[near_one], out=rows)
        out[near_one] = np.log1p(np.mean(np.expm1(shifted), axis=1, dtype=np.float64))
    return (top[:, 0] + out).astype(x.dtype, copy=False)
