"""blocks.py and scan.py: top-k, merging, log-mean-exp, and block-size independence."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms.blocks import (
    FEW_ROWS,
    bank_product,
    block_rows,
    log_mean_exp,
    merge_topk,
    row_blocks,
    topk_desc,
)
from service.algorithms.scan import scan_bank
from tests.support import reference as ref

from .conftest import PROPERTY, make_problem, seeds, unit_rows


def sorted_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k by full sorting: value descending, ties by lower index."""
    idx = np.array([ref.order_desc(row)[:k] for row in scores], dtype=np.int64)
    idx = idx.reshape(scores.shape[0], min(k, scores.shape[1]))
    return idx, np.take_along_axis(scores, idx, axis=1)


# ----------------------------------------------------------------------------- row blocks


@given(n=st.integers(0, 50), rows=st.integers(1, 60))
@PROPERTY
def test_row_blocks_cover_range(n, rows):
    blocks = list(row_blocks(n, rows))
    covered = [i for sl in blocks for i in range(sl.start, sl.stop)]
    assert covered == list(range(n))
    assert all(0 < sl.stop - sl.start <= rows for sl in blocks)


def test_block_rows_fits_budget():
    assert block_rows(1000, 4, budget=4000 * 10) == 10
    assert block_rows(1000, 8, budget=4000 * 10) == 5
    assert block_rows(10**9, 8, budget=1) == 1  # never zero rows
    assert block_rows(0, 4, budget=100) == 100  # zero columns: no division by zero


# ----------------------------------------------------------------------------- topk_desc


@given(seed=seeds, m=st.integers(1, 6), n=st.integers(1, 30), k=st.integers(1, 35))
@PROPERTY
def test_topk_desc_matches_sorting(seed, m, n, k):
    scores = np.random.default_rng(seed).normal(size=(m, n))  # continuous: no ties
    idx, val = topk_desc(scores, k)
    want_idx, want_val = sorted_topk(scores, k)
    assert idx.dtype == np.int64
    assert idx.shape == (m, min(k, n))
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(val, want_val)


def test_topk_desc_k_zero_and_dtype():
    scores = np.arange(6, dtype=np.float32).reshape(2, 3)
    idx, val = topk_desc(scores, 0)
    assert idx.shape == (2, 0) and val.shape == (2, 0)
    idx, val = topk_desc(scores, 2)
    assert val.dtype == np.float32
    np.testing.assert_array_equal(idx, [[2, 1], [2, 1]])


def test_topk_desc_ties_within_winners_by_lower_index():
    # all tied values are selected (k = n): the sort puts the lower index first
    scores = np.array([[1.0, 2.0, 1.0, 2.0]])
    idx, _ = topk_desc(scores, 4)
    np.testing.assert_array_equal(idx, [[1, 3, 0, 2]])


def test_topk_desc_ties_at_the_boundary_by_lower_index():
    idx, _ = topk_desc(np.array([[0.0, 0.0, 1.0, 1.0]]), 1)
    np.testing.assert_array_equal(idx, [[2]])
    idx, _ = topk_desc(np.array([[0.0, 0.0, 0.0, 0.0, 1.0]]), 3)
    np.testing.assert_array_equal(idx, [[4, 0, 1]])


# ----------------------------------------------------------------------------- merge_topk


@given(
    seed=seeds,
    m=st.integers(1, 5),
    ka=st.integers(0, 8),
    kb=st.integers(0, 8),
    k=st.integers(1, 12),
)
@PROPERTY
def test_merge_topk_matches_sorting_the_union(seed, m, ka, kb, k):
    rng = np.random.default_rng(seed)
    # two disjoint index spaces (as when a block is merged into a running top list)
    val_a, val_b = rng.normal(size=(m, ka)), rng.normal(size=(m, kb))
    idx_a = np.tile(np.arange(ka), (m, 1))
    idx_b = np.tile(np.arange(kb) + 100, (m, 1))
    idx, val = merge_topk(idx_a, val_a, idx_b, val_b, k)
    union = np.concatenate([val_a, val_b], axis=1)
    ids = np.concatenate([idx_a, idx_b], axis=1)
    for row in range(m):
        order = ref.order_desc(union[row])[:k]
        np.testing.assert_array_equal(idx[row], ids[row, order])
        np.testing.assert_array_equal(val[row], union[row, order])


# ----------------------------------------------------------------------------- log_mean_exp


def naive_log_mean_exp(x: np.ndarray) -> np.ndarray:
    return np.array([math.log(sum(math.exp(float(v)) for v in row) / len(row)) for row in x])


@given(seed=seeds, m=st.integers(1, 5), n=st.integers(1, 40), scale=st.floats(1e-4, 50.0))
@PROPERTY
def test_log_mean_exp_matches_naive(seed, m, n, scale):
    x = scale * np.random.default_rng(seed).uniform(-1, 1, size=(m, n))
    np.testing.assert_allclose(log_mean_exp(x), naive_log_mean_exp(x), rtol=1e-12, atol=1e-14)


def decimal_log_mean_exp(x: np.ndarray) -> np.ndarray:
    """log mean exp in 50-digit decimal arithmetic: exact enough to judge float64 rounding."""
    with localcontext() as ctx:
        ctx.prec = 50
        return np.array(
            [float((sum(Decimal(float(v)).exp() for v in row) / len(row)).ln()) for row in x]
        )


@pytest.mark.parametrize("scale", [1e-9, 1e-6, 1e-3])
def test_log_mean_exp_tiny_values_keep_precision(scale):
    # β = 1e-3 style inputs, where all terms are ≈ 1: the naive float64 log(mean(exp)) loses
    # digits (relative error ~1e-16/scale); log_mean_exp must not.
    x = scale * np.random.default_rng(0).uniform(-1, 1, size=(3, 100))
    np.testing.assert_allclose(log_mean_exp(x), decimal_log_mean_exp(x), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("magnitude", [1e3, 1e5, 1e30])
def test_log_mean_exp_finite_for_extreme_values(dtype, magnitude):
    x = np.array([[magnitude, -magnitude, 0.0], [magnitude, magnitude, magnitude]], dtype=dtype)
    got = log_mean_exp(x)
    assert got.dtype == dtype
    assert np.isfinite(got).all()
    # the maximum dominates: log mean exp = max + log(share of the maximum)
    np.testing.assert_allclose(got[1], magnitude, rtol=1e-6)
    if magnitude <= 1e5:
        np.testing.assert_allclose(got[0], magnitude - math.log(3), rtol=1e-6)
    x = -np.abs(x)
    assert np.isfinite(log_mean_exp(x)).all()


# ----------------------------------------------------------------------------- scan_bank


@given(seed=seeds, b=st.integers(0, FEW_ROWS + 2), big_n=st.integers(0, 40))
@PROPERTY
def test_bank_product_matches_naive_on_both_paths(seed, b, big_n):
    # few rows: numpy's own loop; more: BLAS. Either is a float32 dot product of unit vectors,
    # whose error is at most d·eps·Σ|x_i·y_i| ≤ d·eps (Higham's γ_d), whatever the order
    rng = np.random.default_rng(seed)
    d = 384
    items, bank = unit_rows(rng, b, d).astype(np.float32), unit_rows(rng, big_n, d)
    got = bank_product(items, bank.astype(np.float32))
    assert got.shape == (b, big_n) and got.dtype == np.float32
    want = [[math.fsum(x * y for x, y in zip(i, g, strict=True)) for g in bank] for i in items]
    bound = d * np.finfo(np.float32).eps
    np.testing.assert_allclose(got, np.reshape(want, (b, big_n)), rtol=0, atol=bound)


def _scan(items, bank, rows, beta=2.5):
    return scan_bank(
        items, bank, beta=beta, mean_topk=(1, 3, 50), neighbour_k=2, bank_topk=2, rows=rows
    )


@given(seed=seeds, n=st.integers(1, 13), big_n=st.integers(1, 9))
@PROPERTY
def test_scan_bank_independent_of_block_size(seed, n, big_n):
    rng = np.random.default_rng(seed)
    items, bank = unit_rows(rng, n, 4), unit_rows(rng, big_n, 4)
    scans = [_scan(items, bank, rows) for rows in (1, 3, None)]
    first = scans[0]
    for other in scans[1:]:
        np.testing.assert_allclose(other.log_mean_exp, first.log_mean_exp, rtol=1e-13, atol=1e-15)
        assert other.topk_means.keys() == first.topk_means.keys()
        for k in first.topk_means:
            np.testing.assert_allclose(other.topk_means[k], first.topk_means[k], atol=1e-15)
        np.testing.assert_allclose(other.neighbour_sum, first.neighbour_sum, atol=1e-14)
        np.testing.assert_array_equal(other.bank_top_idx, first.bank_top_idx)
        np.testing.assert_allclose(other.bank_top_sim, first.bank_top_sim, atol=1e-15)


@given(seed=seeds, rows=st.sampled_from([1, 3, None]))
@PROPERTY
def test_scan_bank_matches_naive(seed, rows):
    p = make_problem(seed, n=7, nq=5)
    items, bank, beta = p.gallery, p.query_bank, 2.5
    scan = _scan(items, bank, rows, beta)
    s = ref.similarities(items, bank)
    np.testing.assert_allclose(
        scan.log_mean_exp, ref.log_z(items, bank, beta) - math.log(len(bank)), atol=1e-12
    )
    for k in (1, 3, 50):
        np.testing.assert_allclose(scan.topk_means[k], ref.bank_topk_mean(items, bank, k))
    for i in range(len(items)):
        want = sum(s[i, b] * bank[b] for b in ref.order_desc(s[i])[:2])
        np.testing.assert_allclose(scan.neighbour_sum[i], want, atol=1e-12)
    for b in range(len(bank)):
        order = ref.order_desc(s[:, b])[:2]
        np.testing.assert_array_equal(scan.bank_top_idx[b], order)
        np.testing.assert_allclose(scan.bank_top_sim[b], s[order, b], atol=1e-12)


def test_scan_bank_only_computes_what_is_asked(problem):
    scan = scan_bank(problem.gallery, problem.query_bank)
    assert scan.log_mean_exp is None and scan.neighbour_sum is None
    assert scan.bank_top_idx is None and scan.topk_means == {}
    scan = scan_bank(problem.gallery, problem.query_bank, bank_topk=100)
    assert scan.bank_top_idx.shape == (len(problem.query_bank), len(problem.gallery))


@given(
    seed=seeds,
    n=st.integers(1, 25),
    k=st.integers(2, 6),
    rows=st.sampled_from([1, 2, 3, 7, None]),
)
@PROPERTY
def test_scan_bank_top_k_with_ties_matches_naive(seed, n, k, rows):
    """Each bank item's top-k over items in blocks (the first k rows merged whole, the later
    blocks through their candidates above the current k-th best): lower row first on ties.
    Entries in {-1, -½, 0, ½, 1} make every similarity exact, so ties are real ties."""
    rng = np.random.default_rng(seed)
    items, bank = rng.integers(-2, 3, (n, 4)) / 2, rng.integers(-2, 3, (6, 4)) / 2
    scan = scan_bank(items, bank, bank_topk=k, rows=rows)
    s = items @ bank.T  # exact
    for b in range(len(bank)):
        order = ref.order_desc(s[:, b])[:k]
        assert scan.bank_top_idx[b].tolist() == order
        assert scan.bank_top_sim[b].tolist() == s[order, b].tolist()
