"""Per-item bank statistics, activation sets and gallery views against the naive definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms import (
    STAT_COLUMNS,
    BankTopK,
    InvGCParams,
    item_stats,
    prepare_items,
)
from tests.support import reference as ref

from .conftest import (
    PROPERTY,
    betas,
    make_extreme_problem,
    make_problem,
    moderate_betas,
    seeds,
    small_params,
)

topks = st.integers(1, 4)


def naive_dbsn(gallery, p, params) -> np.ndarray:
    """The stored DBSN column from SPEC's u(g): ``1 − τ log |BG| − τ log u(g)``."""
    tau, ng = params.dbsn_tau, len(p.gallery_bank)
    v = ref.sinkhorn_v(p.gallery_bank, p.query_bank, tau, params.dbsn_iterations)
    log_u = [math.log(ref.sinkhorn_u(g, p.query_bank, v, tau, ng)) for g in gallery]
    return 1 - tau * math.log(ng) - tau * np.array(log_u)


def naive_stats(gallery, p, params) -> np.ndarray:
    nq, ng = len(p.query_bank), len(p.gallery_bank)
    return np.column_stack(
        [
            ref.log_z(gallery, p.query_bank, params.beta_query_bank) - math.log(nq),
            ref.log_z(gallery, p.gallery_bank, params.beta_gallery_bank) - math.log(ng),
            ref.bank_topk_mean(gallery, p.query_bank, params.nnn_topk),
            ref.bank_topk_mean(gallery, p.query_bank, params.csls_topk),
            naive_dbsn(gallery, p, params),
        ]
    )


def activation_sets(view) -> tuple[set[int], set[int]]:
    flags = view.activated
    return set(np.flatnonzero(flags[:, 0]).tolist()), set(np.flatnonzero(flags[:, 1]).tolist())


def test_stat_columns_order():
    assert STAT_COLUMNS == ("lme_query_bank", "lme_gallery_bank", "nnn_mean", "csls_mean", "dbsn")


@given(
    seed=seeds,
    beta_q=moderate_betas,
    beta_g=moderate_betas,
    nnn_topk=st.integers(1, 20),
    csls_topk=st.integers(1, 20),
)
@PROPERTY
def test_item_stats_match_naive(seed, beta_q, beta_g, nnn_topk, csls_topk):
    p = make_problem(seed)
    params = small_params(
        beta_query_bank=beta_q, beta_gallery_bank=beta_g, nnn_topk=nnn_topk, csls_topk=csls_topk
    )
    got = item_stats(p.gallery, p.query_bank, p.gallery_bank, params)
    assert got.shape == (len(p.gallery), len(STAT_COLUMNS)) and got.dtype == np.float64
    np.testing.assert_allclose(got, naive_stats(p.gallery, p, params), rtol=1e-10, atol=1e-12)


@given(seed=seeds, k=topks)
@PROPERTY
def test_activation_sets_match_naive(seed, k):
    p = make_problem(seed)
    view = prepare_items(p.gallery, p.banks, small_params(dis_topk=k), None).original
    act_q, act_g = activation_sets(view)
    assert act_q == ref.activation_set(p.gallery, p.query_bank, k)
    assert act_g == ref.activation_set(p.gallery, p.gallery_bank, k)
    # BankTopK.build gives the same sets
    top = BankTopK.build(p.gallery, p.query_bank, k)
    assert set(np.flatnonzero(top.activated(len(p.gallery))).tolist()) == act_q


@given(seed=seeds, pool_rate=st.sampled_from([0.05, 0.3, 1.0]), k=topks)
@PROPERTY
def test_adjusted_view_stats_are_computed_on_adjusted_gallery(seed, pool_rate, k):
    """Composition (SPEC): DBNorm statistics of the InvGC view come from the adjusted items."""
    p = make_problem(seed)
    params = small_params(dis_topk=k)
    invgc = InvGCParams(r_gallery_bank=0.3, r_query_bank=0.3, pool_rate=pool_rate)
    adjusted = prepare_items(p.gallery, p.banks, params, invgc).adjusted
    g2 = ref.invgc(
        p.gallery,
        p.query_bank,
        p.gallery_bank,
        r_query_bank=0.3,
        r_gallery_bank=0.3,
        pool_rate=pool_rate,
    )
    np.testing.assert_allclose(adjusted.stats, naive_stats(g2, p, params), atol=1e-10)
    act_q, act_g = activation_sets(adjusted)
    assert act_q == ref.activation_set(g2, p.query_bank, k)
    assert act_g == ref.activation_set(g2, p.gallery_bank, k)


@given(seed=seeds, beta_q=betas, beta_g=betas)
@PROPERTY
def test_stats_finite_for_any_beta_and_extreme_similarities(seed, beta_q, beta_g):
    p = make_extreme_problem(seed)
    params = small_params(beta_query_bank=beta_q, beta_gallery_bank=beta_g)
    prepared = prepare_items(
        p.gallery, p.banks, params, InvGCParams(r_gallery_bank=0.2, r_query_bank=0.2)
    )
    for view in (prepared.original, prepared.adjusted):
        assert np.isfinite(view.stats).all()
        # log-mean-exp lies between β·min s and β·max s
        s_q = p.query_bank @ view.embeddings.T
        lme = view.stats[:, 0]
        assert (lme <= beta_q * s_q.max(axis=0) + 1e-9 * max(1.0, beta_q)).all()
        assert (lme >= beta_q * s_q.min(axis=0) - 1e-9 * max(1.0, beta_q)).all()


@given(seed=seeds, beta=st.floats(1e-3, 40.0))
@PROPERTY
def test_lme_matches_naive_on_extreme_similarities(seed, beta):
    p = make_extreme_problem(seed)
    params = small_params(beta_query_bank=beta, beta_gallery_bank=beta)
    got = item_stats(p.gallery, p.query_bank, p.gallery_bank, params)
    np.testing.assert_allclose(got, naive_stats(p.gallery, p, params), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- invariances


def assert_views_equal(a, b, atol=1e-12) -> None:
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=atol)
    np.testing.assert_allclose(a.stats, b.stats, atol=atol)
    np.testing.assert_array_equal(a.activated, b.activated)
    assert a.bank_sizes == b.bank_sizes
    for mine, theirs in ((a.query_top, b.query_top), (a.gallery_top, b.gallery_top)):
        assert mine.idx.shape == theirs.idx.shape
        # per bank item: the same set of top rows (order among exact ties is not specified)
        for row_a, row_b in zip(mine.idx, theirs.idx, strict=True):
            assert set(row_a.tolist()) == set(row_b.tolist())
        np.testing.assert_allclose(mine.sim, theirs.sim, atol=atol)


def local_invgc(pool_rate: float = 0.2) -> InvGCParams:
    return InvGCParams(r_gallery_bank=0.3, r_query_bank=0.2, pool_rate=pool_rate)


@given(seed=seeds, k=topks, invgc=st.sampled_from([None, local_invgc(0.05), local_invgc(0.5)]))
@PROPERTY
def test_permuting_gallery_permutes_views(seed, k, invgc):
    p = make_problem(seed)
    params = small_params(dis_topk=k)
    perm = np.random.default_rng(seed).permutation(len(p.gallery))
    whole = prepare_items(p.gallery, p.banks, params, invgc)
    permuted = prepare_items(p.gallery[perm], p.banks, params, invgc)
    pairs = [(whole.original, permuted.original)]
    if invgc is not None:
        pairs.append((whole.adjusted, permuted.adjusted))
    for a, b in pairs:
        np.testing.assert_allclose(b.embeddings, a.embeddings[perm], atol=1e-13)
        np.testing.assert_allclose(b.stats, a.stats[perm], atol=1e-12)
        np.testing.assert_array_equal(b.activated, a.activated[perm])


@given(seed=seeds, split=st.integers(1, 11), k=topks)
@PROPERTY
def test_batch_stats_alone_equal_stats_in_gallery(seed, split, k):
    """LocalAdj embeddings and every stat column (DualIS's included) of a batch prepared alone
    equal the same rows prepared with the whole gallery."""
    p = make_problem(seed, n=12)
    params = small_params(dis_topk=k)
    rows = np.sort(np.random.default_rng(seed).choice(12, size=split, replace=False))
    whole = prepare_items(p.gallery, p.banks, params, local_invgc())
    alone = prepare_items(p.gallery[rows], p.banks, params, local_invgc())
    for a, b in ((whole.original, alone.original), (whole.adjusted, alone.adjusted)):
        np.testing.assert_allclose(b.embeddings, a.embeddings[rows], atol=1e-13)
        np.testing.assert_allclose(b.stats, a.stats[rows], atol=1e-12)


@given(
    seed=seeds,
    n_old=st.integers(1, 10),
    n_new=st.integers(1, 6),
    k=topks,
    invgc=st.sampled_from([None, local_invgc()]),
)
@PROPERTY
def test_append_equals_fresh(seed, n_old, n_new, k, invgc):
    p = make_problem(seed, n=n_old + n_new)
    params = small_params(dis_topk=k)
    old = prepare_items(p.gallery[:n_old], p.banks, params, invgc)
    new = prepare_items(p.gallery[n_old:], p.banks, params, invgc)
    fresh = prepare_items(p.gallery, p.banks, params, invgc)
    assert_views_equal(old.original.append(new.original, p.banks), fresh.original)
    if invgc is not None:
        assert_views_equal(old.adjusted.append(new.adjusted, p.banks), fresh.adjusted)


@given(
    seed=seeds,
    n=st.integers(1, 14),
    k=topks,
    invgc=st.sampled_from([None, local_invgc()]),
    data=st.data(),
)
@PROPERTY
def test_remove_equals_fresh(seed, n, k, invgc, data):
    p = make_problem(seed, n=n)
    params = small_params(dis_topk=k)
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    whole = prepare_items(p.gallery, p.banks, params, invgc)
    views = [(whole.original, p.gallery[keep])]
    if invgc is not None:
        views.append((whole.adjusted, whole.adjusted.embeddings[keep]))
    for view, kept in views:
        removed = view.remove(keep, p.banks)
        assert removed.size == int(keep.sum())
        np.testing.assert_allclose(removed.embeddings, kept, atol=0)
        if keep.any():
            fresh = prepare_items(kept, p.banks, params, None).original
            assert_views_equal(removed, fresh)
        else:
            assert removed.stats.shape == (0, len(STAT_COLUMNS))
            assert not removed.activated.any()


@given(seed=seeds, k=topks, data=st.data())
@PROPERTY
def test_remove_then_append_equals_fresh(seed, k, data):
    """A sequence of changes stays exact: delete some rows, then add a batch."""
    p = make_problem(seed, n=14)
    params = small_params(dis_topk=k)
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=10, max_size=10)), dtype=bool)
    keep[0] = True
    view = prepare_items(p.gallery[:10], p.banks, params, None).original
    view = view.remove(keep, p.banks)
    view = view.append(prepare_items(p.gallery[10:], p.banks, params, None).original, p.banks)
    gallery = np.concatenate([p.gallery[:10][keep], p.gallery[10:]])
    fresh = prepare_items(gallery, p.banks, params, None).original
    assert_views_equal(view, fresh)
    act_q, act_g = activation_sets(view)
    assert act_q == ref.activation_set(gallery, p.query_bank, k)
    assert act_g == ref.activation_set(gallery, p.gallery_bank, k)


def test_views_are_immutable(problem):
    params = small_params()
    view = prepare_items(problem.gallery[:6], problem.banks, params, None).original
    before = (view.embeddings.copy(), view.stats.copy(), view.activated.copy())
    view.append(prepare_items(problem.gallery[6:], problem.banks, params, None).original, None)
    view.remove(np.arange(6) % 2 == 0, problem.banks)
    np.testing.assert_array_equal(view.embeddings, before[0])
    np.testing.assert_array_equal(view.stats, before[1])
    np.testing.assert_array_equal(view.activated, before[2])


def test_prepare_items_rejects_dimension_mismatch(problem):
    from service.algorithms import InputError

    with pytest.raises(InputError, match=r"^gallery: "):
        prepare_items(problem.gallery[:, :3], problem.banks, small_params(), None)
