"""Fused float32 reductions of a similarity block: every per-row statistic in one kernel (numba).

Why: after its BLAS product, a bank scan reduced each block with a dozen numpy passes (scale,
max, subtract, ``exp``, sum for each log-mean-exp; the same for DBSN; group maxima, comparison
and gathers for the top-k; a column maximum), each a trip through memory and a temporary;
numpy's float32 ``exp`` alone cost about as much per similarity as a d = 256 product. Here one
kernel reads each row while it is in cache: a maximum pass (row maxima, DBSN's shifted maximum,
the group maxima of the top-k bound, each column's best row), an exponential pass (both sums),
and a candidate pass (the entries at or above the top-k bound). The exponential is an inlined
polynomial (:func:`exp32`) that the compiler vectorises, which numpy's ufunc loop cannot fuse.

Precision (float32 similarities): :func:`exp32`'s relative error is below 3·eps32 on
[−87, 88] (2.5·eps32 at worst on a dense grid against float64 ``exp``; the test asserts 3);
every sum is accumulated in float32 over at most :data:`TILE` terms (the compiler splits them
into vector lanes), then in float64: relative error ≤ (TILE + 3)·eps32 for these positive
terms, against pairwise summation's log2(N)·eps32, i.e. ≈ 8e-6 at most, 1e-7 typically, as an
absolute error of a logarithm. float64 blocks keep the numpy code
(:mod:`~service.algorithms.blocks`, :mod:`~service.algorithms.sinkhorn`); the kernels take
float32 only.

Indices are unsigned (``np.uint64``) inside the loops: numba's negative-index wrap-around
otherwise turns every contiguous load into a gather. Maxima go through ``llvm.maxnum``, the
form of a max reduction LLVM vectorises.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _can_cache() -> bool:
    """Whether numba can keep the compiled kernels on disk (compiled once per install instead
    of once per process, seconds each): beside this module, or in ``NUMBA_CACHE_DIR``. A
    read-only install without it (numba would refuse at import) compiles in memory."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    here = Path(__file__).parent
    cache = here / "__pycache__"
    return os.access(cache if cache.is_dir() else here, os.W_OK)


_CACHE = _can_cache()

#: Terms summed in float32 before a float64 accumulation (bounds the float32 rounding).
TILE = 64

_F = np.float32
_LOG2E = _F(1.4426950408889634)
# Cody-Waite split of ln 2 and the Cephes expf polynomial (relative error < 3·eps32 on the range)
_LN2_HI, _LN2_LO = _F(0.693359375), _F(-2.12194440e-4)
_P = tuple(
    _F(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1)
)
_P5 = _F(5.0000001201e-1)
_LOWEST = _F(-87.0)  # exp(−87) ≈ 1.6e-38, the smallest power 2^−126 the exponent trick reaches
_HIGHEST = _F(88.0)
_HALF, _ONE, _ZERO = _F(0.5), _F(1.0), _F(0.0)


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits`` (2^n as ``(n + 127) << 23``)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _fmax(typingctx, a, b):
    """float32 ``max(a, b)`` as ``llvm.maxnum``: a maximum reduction LLVM vectorises (numba's
    ``max`` is a compare and branch, which it does not)."""
    sig = types.float32(types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        signature = ir.FunctionType(f32, [f32, f32])
        fn = builder.module.declare_intrinsic("llvm.maxnum", [f32], signature)
        return builder.call(fn, args)

    return sig, codegen


@nb.njit(nogil=True, cache=_CACHE)
def exp32(x: float) -> float:
    """float32 ``exp(x)``: Cody-Waite reduction ``x = n·ln2 + r``, a degree-7 polynomial of r,
    and 2^n built from its bits. Strict float semantics (no fastmath: the reduction's two steps
    must not be reassociated); x is clamped to [−87, 88] (below, exp(−87) stands in for
    smaller values, which no sum here that contains a term of size 1 can see)."""
    x = min(max(x, _LOWEST), _HIGHEST)
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = ((((_P[0] * r + _P[1]) * r + _P[2]) * r + _P[3]) * r + _P[4]) * r + _P5
    p = p * (r * r) + r + _ONE
    return p * _float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@intrinsic
def _trailing_zeros(typingctx, x):
    """Index of the lowest set bit of the uint64 ``x`` (x ≠ 0): ``llvm.cttz``, one instruction."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = builder.module.declare_intrinsic(
            "llvm.cttz", [i64], ir.FunctionType(i64, [i64, ir.IntType(1)])
        )
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])

    return sig, codegen


#: Entries per bit mask in :func:`_above` (a uint64).
_MASK_BITS = 64


@nb.njit(nogil=True, fastmath=True, cache=_CACHE)
def _above(s: np.ndarray, theta: float, val: np.ndarray, idx: np.ndarray) -> int:
    """Copy the entries of ``s`` that are ≥ theta (and their columns) into ``val``/``idx``, in
    column order; return their count, or −1 if more than fit. Each slice of 64 entries is
    compared at once into a bit mask (vectorised), and only its set bits are visited, so the
    scalar work is proportional to the (few) candidates, not to the row."""
    n = s.shape[0]
    width = np.uint64(_MASK_BITS)
    full = np.uint64(n // _MASK_BITS * _MASK_BITS)
    cap = val.shape[0]
    one = np.uint64(1)
    count = 0
    start = np.uint64(0)
    while start < full:
        mask = np.uint64(0)
        for j in range(np.uint64(0), width):
            mask |= np.uint64(s[start + j] >= theta) << j
        while mask:
            if count == cap:
                return -1
            j = start + _trailing_zeros(mask)
            val[count] = s[j]
            idx[count] = j
            count += 1
            mask &= mask - one
        start += width
    for j in range(full, np.uint64(n)):
        if s[j] >= theta:
            if count == cap:
                return -1
            val[count] = s[j]
            idx[count] = j
            count += 1
    return count


@intrinsic
def _float_bits(typingctx, value):
    """The int32 bit pattern of the float32 ``value``."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@nb.njit(nogil=True, cache=_CACHE)
def _order_keys(val: np.ndarray, count: int, keys: np.ndarray) -> None:
    """uint32 keys of ``val[:count]`` in the floats' order (sign bit flipped for positives,
    every bit for negatives): comparisons of keys are exact comparisons of the values."""
    for j in range(count):
        bits = np.uint32(_float_bits(val[j]))
        keys[j] = ~bits if bits >> np.uint32(31) else bits | np.uint32(0x80000000)


@nb.njit(nogil=True, fastmath=True, cache=_CACHE)
def _kth_largest_key(keys: np.ndarray, count: int, k: int) -> np.uint64:
    """The k-th largest of ``keys[:count]`` (1 ≤ k ≤ count): the largest t with at least k keys
    ≥ t, by bisection over the 2³² keys (32 vectorised counting passes: no data-dependent
    branches, where a partition of a few hundred floats mispredicts every other compare)."""
    lo, hi = np.uint64(0), np.uint64(1) << np.uint64(32)  # count(≥ lo) ≥ k > count(≥ hi)
    one = np.uint64(1)
    while hi - lo > one:
        mid = (lo + hi) >> one
        at_least = 0
        for j in range(count):
            at_least += np.uint64(keys[j]) >= mid
        if at_least >= k:
            lo = mid
        else:
            hi = mid
    return lo


@nb.njit(nogil=True, fastmath=True, cache=_CACHE)
def _mean_of_largest(val: np.ndarray, keys: np.ndarray, count: int, k: int) -> float:
    """float64 mean of the k largest of ``val[:count]`` (ties at the k-th counted once each)."""
    t = _kth_largest_key(keys, count, k)
    total = 0.0
    above = 0
    at_t = 0.0
    for j in range(count):
        key = np.uint64(keys[j])
        if key > t:
            total += val[j]
            above += 1
        elif key == t:
            at_t = val[j]
    return (total + (k - above) * at_t) / k


@nb.njit(nogil=True, fastmath=True, cache=_CACHE)
def _keep_largest(val: np.ndarray, idx: np.ndarray, keys: np.ndarray, count: int, k: int) -> None:
    """Move the k largest of ``val[:count]`` (with their ``idx``) to ``[:k]``, in column order;
    a tie at the k-th place keeps its first members."""
    t = _kth_largest_key(keys, count, k)
    above = 0
    for j in range(count):
        above += np.uint64(keys[j]) > t
    ties = k - above
    out = 0
    for j in range(count):
        key = np.uint64(keys[j])
        if key > t or (key == t and ties > 0):
            if key == t:
                ties -= 1
            val[out] = val[j]
            idx[out] = idx[j]
            out += 1


@nb.njit(nogil=True, fastmath=True, cache=_CACHE)
def scan_rows(
    sims: np.ndarray,
    beta: float,
    shift: np.ndarray,
    inv_tau: float,
    groups: int,
    k: int,
    widths: np.ndarray,
    near_k: int,
    first_row: int,
    lme_top: np.ndarray,
    lme_mean: np.ndarray,
    dbsn_top: np.ndarray,
    dbsn_sum: np.ndarray,
    col_max: np.ndarray,
    col_row: np.ndarray,
    cand_val: np.ndarray,
    cand_idx: np.ndarray,
    cand_count: np.ndarray,
    kmeans: np.ndarray,
) -> None:
    """Every reduction of the rows of ``sims`` (B, N) float32, into the outputs given.

    Asked for by non-empty arguments (empty arrays / 0 switch a part off):
    - ``beta > 0``: ``lme_top = β·max s``, ``lme_mean = mean exp(β s − lme_top)`` (float64).
    - ``shift`` (N,): ``dbsn_top = max(s + shift)``,
      ``dbsn_sum = Σ exp((s + shift − dbsn_top)·inv_tau)`` (float64).
    - ``groups > 0``: each row's entries ≥ θ, θ the k-th largest of the maxima of ``groups``
      column groups (column j in group j mod groups: a lower bound of the row's k-th largest),
      found into ``cand_val``/``cand_idx`` (B, cap) with their count in ``cand_count``; from
      them the mean of the ``widths[m]`` largest into ``kmeans[:, m]`` (float64) and, if
      ``near_k`` > 0, the ``near_k`` largest moved to the front (column order). A row with more
      than cap candidates (ties) gets count −1 and nothing else: the caller partitions it whole.
    - ``col_max``/``col_row`` (N,): each column's maximum so far and its row (``first_row`` + i;
      the earlier row keeps a tie), updated in place.
    """
    rows, n = sims.shape
    un = np.uint64(n)
    zero = np.uint64(0)
    tile = np.uint64(TILE)
    fbeta = _F(beta)
    ftau = _F(inv_tau)
    want_lme = beta > 0
    want_dbsn = shift.size > 0
    want_col = col_max.size > 0
    ug = np.uint64(groups)
    span = np.uint64((n // groups) * groups) if groups > 0 else zero
    maxima = np.empty(max(groups, 1), np.float32)
    keys = np.empty(max(groups, cand_val.shape[1], 1), np.uint32)
    for i in range(rows):
        s = sims[i]
        # pass 1: maxima (row, shifted row, column groups, columns)
        m1 = s[0]
        m2 = s[0] + (shift[0] if want_dbsn else _ZERO)
        if want_dbsn:
            for j in range(zero, un):
                v = s[j]
                m1 = _fmax(m1, v)
                m2 = _fmax(m2, v + shift[j])
        else:
            for j in range(zero, un):
                m1 = _fmax(m1, s[j])
        if groups > 0:
            for j in range(zero, ug):
                maxima[j] = s[j]
            start = ug
            while start < span:
                for j in range(zero, ug):
                    maxima[j] = _fmax(maxima[j], s[start + j])
                start += ug
        if want_col:
            row = np.int64(first_row + i)
            for j in range(zero, un):
                v = s[j]
                better = v > col_max[j]
                col_max[j] = v if better else col_max[j]
                col_row[j] = row if better else col_row[j]
        # pass 2: exponential sums, float32 tiles into float64
        if want_lme or want_dbsn:
            top1 = fbeta * m1
            total1 = 0.0
            total2 = 0.0
            start = zero
            while start < un:
                stop = min(start + tile, un)
                acc1 = _ZERO
                acc2 = _ZERO
                if want_dbsn and want_lme:
                    for j in range(start, stop):
                        v = s[j]
                        acc1 += exp32(fbeta * v - top1)
                        acc2 += exp32((v + shift[j] - m2) * ftau)
                elif want_lme:
                    for j in range(start, stop):
                        acc1 += exp32(fbeta * s[j] - top1)
                else:
                    for j in range(start, stop):
                        acc2 += exp32((s[j] + shift[j] - m2) * ftau)
                total1 += acc1
                total2 += acc2
                start = stop
            if want_lme:
                lme_top[i] = top1
                lme_mean[i] = total1 / n
            if want_dbsn:
                dbsn_top[i] = m2
                dbsn_sum[i] = total2
        # pass 3: the top-k candidates
        if groups > 0:
            _order_keys(maxima, groups, keys)
            theta_key = _kth_largest_key(keys, groups, k)
            theta = maxima[0]
            for j in range(groups):
                theta = maxima[j] if np.uint64(keys[j]) == theta_key else theta
            count = _above(s, theta, cand_val[i], cand_idx[i])
            cand_count[i] = count
            if count >= 0:
                _order_keys(cand_val[i], count, keys)
                for m in range(widths.shape[0]):
                    kmeans[i, m] = _mean_of_largest(cand_val[i], keys, count, widths[m])
                if near_k > 0:
                    _keep_largest(cand_val[i], cand_idx[i], keys, count, near_k)


#: Floats of one row group in :func:`column_lse_update` (1 MiB: read twice from the L2 cache).
_GROUP_FLOATS = 1 << 18


@nb.njit(nogil=True, fastmath=True, cache=_CACHE)
def column_lse_update(x: np.ndarray, inv_tau: float, top: np.ndarray, total: np.ndarray) -> None:
    """Add the rows of ``x`` (B, C) float32 to running column log-sum-exps: ``top`` (C,) float32
    (start: the lowest float32) and ``total`` (C,) float64 (start: 0) keep
    ``Σ exp((s − top)·inv_tau)`` over every row added so far, so ``top + log(total)/inv_tau``
    is each column's τ·LSE. Rows go in cache-sized groups of at most :data:`TILE` (a group's
    column maxima first, then its float32 sums, while it is in cache); a column whose maximum
    rises rescales its total (float64 ``exp``, rare after the first groups)."""
    rows, n = x.shape
    un = np.uint64(n)
    zero = np.uint64(0)
    ftau = _F(inv_tau)
    peak = np.empty(n, np.float32)
    acc = np.empty(n, np.float32)
    group = max(1, min(TILE, _GROUP_FLOATS // max(n, 1)))
    for first in range(0, rows, group):
        last = min(first + group, rows)
        for j in range(zero, un):
            peak[j] = x[first, j]
        for i in range(first + 1, last):
            s = x[i]
            for j in range(zero, un):
                peak[j] = _fmax(peak[j], s[j])
        for j in range(n):
            if peak[j] > top[j]:
                total[j] *= math.exp((np.float64(top[j]) - np.float64(peak[j])) * inv_tau)
                top[j] = peak[j]
        for j in range(zero, un):
            acc[j] = _ZERO
        for i in range(first, last):
            s = x[i]
            for j in range(zero, un):
                acc[j] += exp32((s[j] - top[j]) * ftau)
        for j in range(zero, un):
            total[j] += acc[j]


def log_of(top: np.ndarray, total: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """float64 ``top + scale·log(total)``: the kernels' (maximum, sum of exponentials) pairs as
    a log-sum-exp (``scale`` = τ for DBSN's similarity units)."""
    return top.astype(np.float64) + scale * np.log(total)


#: 2^112: scales a float16's exponent and mantissa bits, placed in a float32, to its value.
_HALF_SCALE = _F(2.0**112)


@nb.njit(nogil=True, cache=_CACHE)
def _widen_half(bits: np.ndarray, out: np.ndarray) -> None:
    """``out`` (float32) = the float16 values whose bit patterns are ``bits`` (uint16), both
    flat. The magnitude bits shifted into float32 position and scaled by 2^112 give every finite
    value exactly, subnormals included (the product's exponent is exact; one multiply, no
    branch); inf and NaN keep an all-ones exponent; the sign is copied. Vectorised by LLVM:
    ≈ 0.15 ns a value here, against 1.5–2.8 for numpy's float16 cast."""
    for i in range(bits.size):
        h = np.int32(bits[i])
        magnitude = _float_bits(_float_from_bits(np.int32((h & 0x7FFF) << 13)) * _HALF_SCALE)
        if (h & 0x7C00) == 0x7C00:
            magnitude |= 0x7F800000
        out[i] = _float_from_bits(np.int32(magnitude | ((h & 0x8000) << 16)))


def widen_half(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float16 ``block`` as float32 (exactly), into ``out`` (a C-contiguous float32 array of
    its shape) if given."""
    block = np.ascontiguousarray(block)
    if out is None:
        out = np.empty(block.shape, np.float32)
    _widen_half(block.reshape(-1).view(np.uint16), out.reshape(-1))
    return out


@nb.njit(nogil=True, fastmath=True, cache=_CACHE)
def few_rows_product(items: np.ndarray, bank: np.ndarray, out: np.ndarray) -> None:
    """``out`` (m, N) = ``items`` (m, d) · ``bank`` (N, d)ᵀ, float32, on this thread.

    For a few rows (one-item gallery changes), where BLAS would hand the product to threads
    that may wait for a core. Four bank rows per pass over an item: four independent chains
    of vector FMAs (one chain waits out each FMA's latency: numpy's row loop is ≈ 4× slower).
    The summation order differs from BLAS's; each dot product errs by ≤ d·eps32·Σ|xᵢyᵢ|
    either way."""
    rows, d = items.shape
    n = bank.shape[0]
    ud = np.uint64(d)
    zero = np.uint64(0)
    full = n - n % 4
    for j in range(0, full, 4):  # the bank is read once; the few items stay in cache
        b0, b1, b2, b3 = bank[j], bank[j + 1], bank[j + 2], bank[j + 3]
        for i in range(rows):
            a = items[i]
            s0 = s1 = s2 = s3 = _ZERO
            for t in range(zero, ud):
                x = a[t]
                s0 += x * b0[t]
                s1 += x * b1[t]
                s2 += x * b2[t]
                s3 += x * b3[t]
            out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = s0, s1, s2, s3
    for j in range(full, n):
        b0 = bank[j]
        for i in range(rows):
            a = items[i]
            s0 = _ZERO
            for t in range(zero, ud):
                s0 += a[t] * b0[t]
            out[i, j] = s0


#: Columns per group in :func:`above_floor`'s vectorised test.
_GROUP = 64


@nb.njit(nogil=True, fastmath=True, cache=_CACHE)
def above_floor(
    sims: np.ndarray, floor: np.ndarray, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
) -> int:
    """The entries of ``sims`` (B, N) float32 strictly above their column's ``floor`` (N,)
    (finite: −inf replaced by the lowest float32), written to ``rows``/``cols``/``vals`` in
    row-major order; returns their count, or −1 when there are more than ``rows.size``.

    One vectorised pass per group of :data:`_GROUP` columns (the largest ``s − floor``; a
    difference of floats is positive exactly when the first is larger), and a scalar pass only
    over the groups that hold a candidate: after the first blocks of a bank scan, a column's
    k-th best is rarely beaten, so most groups are skipped."""
    b, n = sims.shape
    un = np.uint64(n)
    group = np.uint64(_GROUP)
    cap = rows.size
    count = 0
    for i in range(b):
        s = sims[i]
        for start in range(np.uint64(0), un, group):
            stop = min(start + group, un)
            best = s[start] - floor[start]
            for j in range(start, stop):
                best = _fmax(best, s[j] - floor[j])
            if best > _ZERO:
                for j in range(start, stop):
                    if s[j] > floor[j]:
                        if count == cap:
                            return -1
                        rows[count] = i
                        cols[count] = j
                        vals[count] = s[j]
                        count += 1
    return count
