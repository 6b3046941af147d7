"""The fused float32 scan kernel (:mod:`service.algorithms.fused`) against float64 references.

Tolerances, from the maths (eps = float32's 2⁻²³; the kernel's own error, on the same float32
similarities the reference gets in float64):
- ``exp32``: Cody-Waite reduction and Cephes' polynomial: relative error 2.5·eps at worst on a
  dense grid; 3·eps asserted.
- log-mean-exp at β (log units): rounding of ``β·s`` and of ``β·s − top`` (≤ 3·eps·β·max|s| in
  the exponent, i.e. relative in each term), ``exp32`` (3·eps), the float32 tile sum of
  ≤ TILE positive terms ((TILE − 1)·eps relative), the float64 rest (nothing at this scale):
  ``(TILE + 3 + 4·β·max|s|)·eps`` absolute after the logarithm.
- DBSN's row stat (similarity units, τ·LSE): rounding of ``y = s + τ·log v`` (the shift is
  rounded to float32 too) and of ``y − top`` (≤ 3·eps·max|y| absolute, carried unamplified),
  the ``/τ`` product's relative rounding (eps·|y − top|/τ in the exponent, at most 90·eps for
  any term that is not flushed, times τ back in similarity units), ``exp32`` and the tile sum
  (``(TILE + 3)·eps`` relative, times τ): ``(3·max|y| + τ·(TILE + 93))·eps``.
- top-k means and neighbours: the same float32 values are selected (exact comparisons), the
  mean summed in float64: a few eps of the largest value.
- each column's best row: exact (the earlier row on ties, across parts and blocks).
End to end (``scan_bank`` on float32 items and banks against float64 ones), the BLAS product's
d·eps per similarity is added, multiplied by β for the log-mean-exp (its gradient in s sums to β).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms import fused
from service.algorithms.scan import _column_start, _RowReductions, scan_bank
from service.algorithms.sinkhorn import DbsnWeights, _ColumnLse, scaled_logsumexp
from tests.support import reference as ref

from .conftest import PROPERTY, seeds, unit_rows

EPS = float(np.finfo(np.float32).eps)


@nb.njit
def _exp_all(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.size):
        out[i] = fused.exp32(x[i])


def test_exp32_within_three_eps_on_its_range():
    x = np.concatenate(
        [np.linspace(-87, 88, 2_000_001, dtype=np.float32), np.float32([-87, 0, 1e-30, 88])]
    )
    got = np.empty_like(x)
    _exp_all(x, got)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) <= 3 * EPS


def test_exp32_clamps_far_below_its_range_to_a_negligible_positive_value():
    got = np.empty(3, np.float32)
    _exp_all(np.float32([-88, -1e4, -3e38]), got)
    assert np.all(got >= 0) and np.all(got <= 2e-38)


def _reductions(beta, mean_topk, neighbour_k, columns, log_v, tau):
    dbsn = DbsnWeights(log_v, tau) if log_v is not None else None
    return _RowReductions(beta, mean_topk, neighbour_k, columns, dbsn)


def _run(per_row, sims, fused_path: bool):
    rows, n = sims.shape
    lme, dbsn = np.empty(rows, sims.dtype), np.empty(rows, sims.dtype)
    means = {k: np.empty(rows, sims.dtype) for k in per_row.mean_topk}
    near_k = min(per_row.neighbour_k or 0, n)
    near = (np.empty((rows, near_k), np.int64), np.empty((rows, near_k), sims.dtype))
    col = _column_start(n)
    if fused_path:
        per_row.run_fused(sims, 0, lme, means, near, dbsn, col)
    else:
        per_row.run(sims, lme, means, near, dbsn)
    return lme, dbsn, means, near, col


@given(
    seed=seeds,
    rows=st.integers(1, 9),
    cols=st.sampled_from([1, 7, 64, 200, 1000, 3001]),
    beta=st.sampled_from([1e-3, 0.5, 3.0, 30.0]),
    tau=st.sampled_from([0.01, 0.1, 1.0]),
    mean_topk=st.lists(st.integers(1, 40), min_size=0, max_size=3, unique=True),
    neighbour_k=st.one_of(st.none(), st.integers(1, 30)),
    scale=st.sampled_from([0.06, 0.5, 1.0]),
    levels=st.sampled_from([0, 4]),
)
@PROPERTY
def test_fused_rows_match_float64(
    seed, rows, cols, beta, tau, mean_topk, neighbour_k, scale, levels
):
    """Every reduction of a float32 block equals the float64 numpy reductions of the same
    values within the bounds of the module doc; ``levels`` > 0 draws few distinct values
    (ties everywhere: candidates overflow, the rows are partitioned whole)."""
    rng = np.random.default_rng(seed)
    sims = np.clip(rng.standard_normal((rows, cols)) * scale, -1, 1).astype(np.float32)
    if levels:
        sims = (rng.integers(0, levels, (rows, cols)) / levels).astype(np.float32)
    log_v = rng.standard_normal(cols) * 3
    per_row = _reductions(beta, tuple(mean_topk), neighbour_k, cols, log_v, tau)
    lme, dbsn, means, near, col = _run(per_row, sims, fused_path=True)
    per_row64 = _reductions(beta, tuple(mean_topk), neighbour_k, cols, log_v, tau)
    lme64, dbsn64, means64, near64, _ = _run(per_row64, sims.astype(np.float64), False)
    top = float(np.abs(sims).max())
    np.testing.assert_allclose(lme, lme64, rtol=0, atol=(fused.TILE + 3 + 4 * beta * top) * EPS)
    y_top = top + float(np.abs(tau * log_v).max())
    np.testing.assert_allclose(
        dbsn, dbsn64, rtol=0, atol=(3 * y_top + tau * (fused.TILE + 93)) * EPS
    )
    for k in mean_topk:
        np.testing.assert_allclose(means[k], means64[k], rtol=0, atol=4 * top * EPS)
    if neighbour_k is not None:
        idx, val = near
        np.testing.assert_array_equal(np.sort(val, axis=1), np.sort(near64[1], axis=1))
        np.testing.assert_array_equal(np.take_along_axis(sims, idx, axis=1), val)
        assert all(len(set(r)) == idx.shape[1] for r in idx.tolist())
    best, best_row = col
    np.testing.assert_array_equal(best, sims.max(axis=0))
    np.testing.assert_array_equal(best_row, sims.argmax(axis=0))


def test_fused_rows_take_the_candidate_path_on_wide_rows():
    """Rows wide enough for the group-maximum bound select from candidates (no overflow)."""
    rng = np.random.default_rng(1)
    sims = rng.standard_normal((5, 4000)).astype(np.float32)
    per_row = _reductions(None, (10, 3), 20, 4000, None, 1.0)
    k = per_row.largest
    cand_val = np.empty((5, 8 * k), np.float32)
    cand_idx = np.empty((5, 8 * k), np.int64)
    count = np.empty(5, np.int64)
    kmeans = np.empty((5, 3))
    empty = np.empty(0, np.float32)
    fused.scan_rows(
        sims, 0.0, empty, 1.0, 4 * k, k, per_row.widths, 0, 0, empty, np.empty(0), empty,
        np.empty(0), empty, np.empty(0, np.int64), cand_val, cand_idx, count, kmeans,
    )  # fmt: skip
    assert (count >= k).all() and (count < 2 * k).all()  # the bound is tight
    want = -np.sort(-sims, axis=1)
    for m, width in enumerate(per_row.widths):
        np.testing.assert_allclose(kmeans[:, m], want[:, :width].mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize("rows", [1, 3, None])
@pytest.mark.parametrize("seed", range(3))
def test_scan_bank_float32_matches_float64(seed, rows):
    """End to end through blocks and parts: float32 scan vs the float64 scan (itself tested
    against the loop reference), tolerance plus the product's d·eps."""
    rng = np.random.default_rng(seed)
    d = 16
    items, bank = unit_rows(rng, 40, d), unit_rows(rng, 700, d)
    log_v = rng.standard_normal(700)
    kwargs = dict(beta=2.5, mean_topk=(10, 3), neighbour_k=7, bank_topk=1, rows=rows)
    s32 = scan_bank(
        items.astype(np.float32), bank.astype(np.float32), dbsn=DbsnWeights(log_v, 0.05), **kwargs
    )
    s64 = scan_bank(items, bank, dbsn=DbsnWeights(log_v, 0.05), **kwargs)
    blas = d * EPS
    np.testing.assert_allclose(s32.log_mean_exp, s64.log_mean_exp, atol=2.5 * blas + 80 * EPS)
    np.testing.assert_allclose(s32.dbsn, s64.dbsn, atol=blas + 100 * EPS)
    for k in (10, 3):
        np.testing.assert_allclose(s32.topk_means[k], s64.topk_means[k], atol=blas + 4 * EPS)
    np.testing.assert_allclose(s32.neighbour_sum, s64.neighbour_sum, atol=7 * (blas + 4 * EPS))
    sims = items @ bank.T
    gap = np.sort(sims, axis=0)[-1] - np.sort(sims, axis=0)[-2]
    clear = gap > 4 * blas  # columns whose best row float32 rounding cannot swap
    np.testing.assert_array_equal(s32.bank_top_idx[clear, 0], s64.bank_top_idx[clear, 0])


@given(seed=seeds, n=st.integers(1, 40), rows=st.sampled_from([1, 2, 7, None]))
@PROPERTY
def test_fused_bank_top1_keeps_the_earlier_row_on_ties(seed, n, rows):
    """Each bank item's best item over blocks and parts, float32, exact ties everywhere
    (entries in {-1, -½, 0, ½, 1}): the lowest row wins, as the loop reference says."""
    rng = np.random.default_rng(seed)
    items = (rng.integers(-2, 3, (n, 4)) / 2).astype(np.float32)
    bank = (rng.integers(-2, 3, (6, 4)) / 2).astype(np.float32)
    scan = scan_bank(items, bank, bank_topk=1, beta=1.0, rows=rows)
    s = items.astype(np.float64) @ bank.T.astype(np.float64)
    for b in range(len(bank)):
        assert scan.bank_top_idx[b, 0] == ref.order_desc(s[:, b])[0]
        assert scan.bank_top_sim[b, 0] == s[ref.order_desc(s[:, b])[0], b]


@pytest.mark.parametrize("columns", [3, 300, 5000])
def test_column_lse_of_parts_in_any_order_matches_float64(columns):
    """Sinkhorn's running column τ·LSE: float32 parts through the kernel (row groups, maxima
    that rise in later parts and rescale the sums) equal one float64 log-sum-exp of all rows."""
    rng = np.random.default_rng(columns)
    tau = 0.01
    x = np.clip(rng.standard_normal((300, columns)) * 0.2, -1, 1).astype(np.float32)
    x[250:] += 0.5  # later rows hold the maxima: every column rescales
    acc32 = _ColumnLse(columns, np.dtype(np.float32), tau)
    acc64 = _ColumnLse(columns, np.dtype(np.float64), tau)
    for slot, part in [(0, slice(0, 70)), (2, slice(70, 71)), (0, slice(71, 300))]:
        acc32.add(slot, x[part])
        acc64.add(slot, x[part].astype(np.float64))
    want = scaled_logsumexp(x.astype(np.float64), tau, axis=0)
    np.testing.assert_allclose(acc64.result(), want, rtol=0, atol=1e-12)
    top = float(np.abs(x).max())
    np.testing.assert_allclose(acc32.result(), want, rtol=0, atol=(3 * top + tau * 100) * EPS)


@given(
    seed=seeds,
    n=st.integers(1, 40),
    k=st.integers(2, 6),
    rows=st.sampled_from([1, 3, 7, None]),
    share=st.sampled_from([0, 0.02, 1]),
)
@PROPERTY
def test_bank_top_k_candidates_from_the_kernel_match_naive(seed, n, k, rows, share):
    """float32 blocks find their candidates above each column's k-th best with
    ``fused.above_floor`` (buffers for ``share`` of a block's entries: 0 and 0.02 overflow, so
    the numpy path takes over for those blocks): each bank item's top-k equals the naive one,
    lower row first on ties. Entries in {-1, -½, 0, ½, 1}: every similarity is exact, ties are
    real ties; 70 columns cross a group of 64."""
    from service.algorithms.scan import _BankTop

    rng = np.random.default_rng(seed)
    items = (rng.integers(-2, 3, (n, 4)) / 2).astype(np.float32)
    bank = (rng.integers(-2, 3, (70, 4)) / 2).astype(np.float32)
    before = _BankTop.CANDIDATE_SHARE
    _BankTop.CANDIDATE_SHARE = share
    try:
        scan = scan_bank(items, bank, bank_topk=k, rows=rows)
    finally:
        _BankTop.CANDIDATE_SHARE = before
    s = items.astype(np.float64) @ bank.T.astype(np.float64)
    for b in range(len(bank)):
        order = ref.order_desc(s[:, b])[:k]
        assert scan.bank_top_idx[b].tolist() == order
        assert scan.bank_top_sim[b].tolist() == s[order, b].tolist()


def test_above_floor_finds_exactly_the_entries_above_their_column_floor():
    rng = np.random.default_rng(2)
    sims = rng.normal(size=(33, 150)).astype(np.float32)
    floor = rng.normal(size=150).astype(np.float32)
    floor[::7] = np.finfo(np.float32).min  # "no k-th best yet": every entry
    cap = sims.size
    rows, cols = np.empty(cap, np.int32), np.empty(cap, np.int32)
    vals = np.empty(cap, np.float32)
    count = fused.above_floor(sims, floor, rows, cols, vals)
    want_rows, want_cols = np.nonzero(sims > floor)
    assert count == want_rows.size
    assert rows[:count].tolist() == want_rows.tolist()
    assert cols[:count].tolist() == want_cols.tolist()
    assert vals[:count].tolist() == sims[want_rows, want_cols].tolist()
    small = np.empty(count - 1, np.int32)
    assert fused.above_floor(sims, floor, small, small, small.astype(np.float32)) == -1
