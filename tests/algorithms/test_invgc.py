"""InvGC (full adjacency and LocalAdj) against the naive formulas of docs/spec.md."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms import InvGCParams, NormParams, invgc_adjust, prepare_items
from tests.support import reference as ref

from .conftest import PROPERTY, make_extreme_problem, make_problem, seeds, small_params

rates = st.floats(min_value=0.0, max_value=2.0)
pool_rates = st.sampled_from([1e-6, 0.05, 0.1, 0.25, 0.5, 0.999, 1.0])


def naive(p, params: InvGCParams, gallery=None) -> np.ndarray:
    return ref.invgc(
        p.gallery if gallery is None else gallery,
        p.query_bank,
        p.gallery_bank,
        r_query_bank=params.r_query_bank,
        r_gallery_bank=params.r_gallery_bank,
        adjacency=params.adjacency,
        pool_rate=params.pool_rate,
    )


@pytest.mark.parametrize(
    ("pool_rate", "bank_size", "k"),
    [(0.01, 10, 1), (0.01, 100, 1), (0.01, 250, 2), (0.1, 15, 1), (0.5, 7, 3), (1.0, 7, 7)],
)
def test_neighbour_count(pool_rate, bank_size, k):
    assert InvGCParams(pool_rate=pool_rate).neighbours(bank_size) == k


@given(seed=seeds, r_q=rates, r_g=rates, pool_rate=pool_rates)
@PROPERTY
def test_local_adj_matches_naive(seed, r_q, r_g, pool_rate):
    p = make_problem(seed)
    params = InvGCParams(r_gallery_bank=r_g, r_query_bank=r_q, pool_rate=pool_rate)
    got = invgc_adjust(p.gallery, p.query_bank, p.gallery_bank, params)
    np.testing.assert_allclose(got, naive(p, params), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-12)


@given(seed=seeds, r_q=rates, r_g=rates)
@PROPERTY
def test_full_adjacency_matches_naive(seed, r_q, r_g):
    p = make_problem(seed)
    params = InvGCParams(r_gallery_bank=r_g, r_query_bank=r_q, adjacency="full")
    got = invgc_adjust(p.gallery, p.query_bank, p.gallery_bank, params)
    np.testing.assert_allclose(got, naive(p, params), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-12)


def test_banks_have_separate_rates(problem):
    """Only the gallery-bank rate set: equals normalize(0.5 m_BG + 0.5 g)."""
    params = InvGCParams(r_gallery_bank=0.7, r_query_bank=0.0, adjacency="full")
    got = invgc_adjust(problem.gallery, problem.query_bank, problem.gallery_bank, params)
    m_g = ref.invgc_full_bank(problem.gallery, problem.gallery_bank, 0.7)
    want = ref.normalize_rows(0.5 * m_g + 0.5 * problem.gallery)
    np.testing.assert_allclose(got, want, atol=1e-12)
    # and not symmetric in the banks
    swapped = InvGCParams(r_gallery_bank=0.0, r_query_bank=0.7, adjacency="full")
    other = invgc_adjust(problem.gallery, problem.query_bank, problem.gallery_bank, swapped)
    assert not np.allclose(got, other)


@pytest.mark.parametrize("adjacency", ["local", "full"])
def test_zero_rates_are_identity(problem, adjacency):
    params = InvGCParams(r_gallery_bank=0.0, r_query_bank=0.0, adjacency=adjacency)
    got = invgc_adjust(problem.gallery, problem.query_bank, problem.gallery_bank, params)
    np.testing.assert_allclose(got, problem.gallery, atol=1e-14)


@pytest.mark.parametrize("adjacency", ["local", "full"])
def test_float32_in_float32_out(problem, adjacency):
    params = InvGCParams(r_gallery_bank=0.3, r_query_bank=0.2, adjacency=adjacency)
    g32 = problem.gallery.astype(np.float32)
    got = invgc_adjust(
        g32,
        problem.query_bank.astype(np.float32),
        problem.gallery_bank.astype(np.float32),
        params,
    )
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, naive(problem, params), atol=1e-5)


@given(seed=seeds, split=st.integers(1, 11), r=rates)
@PROPERTY
def test_full_adjacency_batch_with_gallery_mean_equals_whole(seed, split, r):
    p = make_problem(seed, n=12)
    params = InvGCParams(r_gallery_bank=r, r_query_bank=0.5 * r + 0.1, adjacency="full")
    whole = invgc_adjust(p.gallery, p.query_bank, p.gallery_bank, params)
    mean = p.gallery.mean(axis=0)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(p.gallery), size=split, replace=False))
    batch = invgc_adjust(p.gallery[rows], p.query_bank, p.gallery_bank, params, gallery_mean=mean)
    np.testing.assert_allclose(batch, whole[rows], atol=1e-12)
    # the same through prepare_items
    prepared = prepare_items(p.gallery[rows], p.banks, small_params(), params, gallery_mean=mean)
    np.testing.assert_allclose(prepared.adjusted.embeddings, whole[rows], atol=1e-12)


def test_full_adjacency_batch_without_gallery_mean_differs(problem):
    """Without gallery_mean a batch is treated as the whole gallery: the coupling is real."""
    params = InvGCParams(r_gallery_bank=1.0, r_query_bank=1.0, adjacency="full")
    whole = invgc_adjust(problem.gallery, problem.query_bank, problem.gallery_bank, params)
    alone = invgc_adjust(problem.gallery[:3], problem.query_bank, problem.gallery_bank, params)
    np.testing.assert_allclose(alone, naive(problem, params, problem.gallery[:3]), atol=1e-12)
    assert not np.allclose(alone, whole[:3])


@given(seed=seeds, split=st.integers(1, 11), pool_rate=pool_rates)
@PROPERTY
def test_local_adj_batch_alone_equals_batch_in_gallery(seed, split, pool_rate):
    p = make_problem(seed, n=12)
    params = InvGCParams(r_gallery_bank=0.4, r_query_bank=0.3, pool_rate=pool_rate)
    whole = invgc_adjust(p.gallery, p.query_bank, p.gallery_bank, params)
    rows = np.sort(np.random.default_rng(seed).choice(12, size=split, replace=False))
    batch = invgc_adjust(p.gallery[rows], p.query_bank, p.gallery_bank, params)
    np.testing.assert_allclose(batch, whole[rows], atol=1e-13)


@given(seed=seeds, pool_rate=pool_rates, adjacency=st.sampled_from(["local", "full"]))
@PROPERTY
def test_permuting_gallery_permutes_adjusted(seed, pool_rate, adjacency):
    p = make_problem(seed)
    params = InvGCParams(
        r_gallery_bank=0.4, r_query_bank=0.3, pool_rate=pool_rate, adjacency=adjacency
    )
    perm = np.random.default_rng(seed).permutation(len(p.gallery))
    whole = invgc_adjust(p.gallery, p.query_bank, p.gallery_bank, params)
    permuted = invgc_adjust(p.gallery[perm], p.query_bank, p.gallery_bank, params)
    np.testing.assert_allclose(permuted, whole[perm], atol=1e-12)


@given(seed=seeds, pool_rate=pool_rates, adjacency=st.sampled_from(["local", "full"]))
@PROPERTY
def test_prepare_items_adjusted_view_uses_naive_invgc(seed, pool_rate, adjacency):
    p = make_problem(seed)
    params = InvGCParams(
        r_gallery_bank=0.25, r_query_bank=0.35, pool_rate=pool_rate, adjacency=adjacency
    )
    prepared = prepare_items(p.gallery, p.banks, small_params(), params)
    np.testing.assert_allclose(prepared.adjusted.embeddings, naive(p, params), atol=1e-10)
    np.testing.assert_array_equal(prepared.original.embeddings, p.gallery)
    assert prepare_items(p.gallery, p.banks, NormParams(), None).adjusted is None


@given(seed=seeds, adjacency=st.sampled_from(["local", "full"]), r=st.floats(0.0, 50.0))
@PROPERTY
def test_invgc_finite_on_extreme_data(seed, adjacency, r):
    p = make_extreme_problem(seed)
    params = InvGCParams(r_gallery_bank=r, r_query_bank=r, pool_rate=1.0, adjacency=adjacency)
    got = invgc_adjust(p.gallery, p.query_bank, p.gallery_bank, params)
    assert np.isfinite(got).all()
