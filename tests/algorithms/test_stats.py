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
    get_normaliser,
    item_stats,
    prepare_items,
    search,
    top1_raw,
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


def _loop_live_topk(gallery, bank, live, k) -> list[list[int]]:
    """Each bank item's k best live gallery rows, best first (lower row on ties), by loops."""
    alive = [j for j in range(len(gallery)) if live[j]]
    out = []
    for b in bank:
        sims = [ref.dot(b, gallery[j]) for j in alive]
        out.append([alive[i] for i in ref.order_desc(sims)[:k]])
    return out


@given(seed=seeds, n=st.integers(1, 14), k=st.integers(1, 5), data=st.data())
@PROPERTY
def test_tombstoned_bank_topk_equals_a_loop_over_the_live_rows(seed, n, k, data):
    """BankTopK.tombstone rescans exactly the bank items whose top-k held a newly dead row, over
    the live rows: the result is each bank item's top-k of the live rows (loop reference),
    the dead rows are in none, and the untouched bank items keep their arrays as they were."""
    p = make_problem(seed, n=n)
    top = BankTopK.build(p.gallery, p.query_bank, k)
    live = np.ones(n, bool)
    for _ in range(2):  # a second round kills rows of a gallery that already has dead ones
        live = live & np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        after = top.tombstone(live, p.gallery, p.query_bank)
        want = _loop_live_topk(p.gallery, p.query_bank, live, k)
        assert after.idx.tolist() == want
        assert after.idx.shape == (len(p.query_bank), min(k, int(live.sum())))
        sims = ref.similarities(p.query_bank, p.gallery)
        want_sim = [[sims[b, j] for j in row] for b, row in enumerate(want)]
        # float32 products of unit vectors: d·eps apart at most from the float64 loop
        np.testing.assert_allclose(
            after.sim,
            np.array(want_sim).reshape(after.sim.shape),
            atol=4 * p.gallery.shape[1] * 2**-23,
        )
        assert not after.occurrence(n, after.idx.shape[1])[~live].any()
        if after.idx.shape[1] == top.idx.shape[1]:  # untouched bank items: as they were
            untouched = live[top.idx].all(axis=1)
            np.testing.assert_array_equal(after.idx[untouched], top.idx[untouched])
            np.testing.assert_array_equal(after.sim[untouched], top.sim[untouched])
        top = after


@given(
    seed=seeds,
    k=st.integers(1, 4),
    spares=st.booleans(),
    steps=st.lists(st.tuples(st.booleans(), st.integers(1, 3)), min_size=1, max_size=12),
)
@PROPERTY
def test_bank_topk_through_appends_and_deaths_equals_a_loop_over_the_live_rows(
    seed, k, spares, steps
):
    """Appends (merge) and deaths (tombstone) in any order, with spares (the next ranks and
    the floor below which nothing is stored) or without (every loss rescans): after each step
    the top-k is each bank item's top-k of the live rows, by a loop over them."""
    rng = np.random.default_rng(seed)
    p = make_problem(seed, n=40)
    n0 = 20
    top = BankTopK.build(p.gallery[:n0], p.query_bank, k)
    if not spares:
        top = BankTopK(top.idx, top.sim, k)
    live, n = np.ones(n0, bool), n0
    for grow, count in steps:
        if grow and n < len(p.gallery):
            batch = p.gallery[n : n + count]
            top = top.merge(BankTopK.build(batch, p.query_bank, k), n)
            live = np.concatenate([live, np.ones(len(batch), bool)])
            n += len(batch)
        elif live.sum() > 1:
            live = live.copy()
            live[
                rng.choice(np.flatnonzero(live), min(count, int(live.sum()) - 1), replace=False)
            ] = False
            top = top.tombstone(live, p.gallery[:n], p.query_bank)
        assert top.idx.tolist() == _loop_live_topk(p.gallery[:n], p.query_bank, live, k)
        assert (top.floor is not None) == spares


@given(seed=seeds, k=topks, invgc=st.sampled_from([None, local_invgc()]), data=st.data())
@PROPERTY
def test_tombstoned_view_serves_the_live_rows_and_compacts_to_a_fresh_view(seed, k, invgc, data):
    """A view with dead rows: the live rows' stats and activation are a fresh build's on the live
    rows, searches never return a dead row, appends after it stay exact, and compacting it
    gives the fresh view row for row."""
    p = make_problem(seed, n=14)
    params = small_params(dis_topk=k)
    live = np.array(data.draw(st.lists(st.booleans(), min_size=10, max_size=10)), dtype=bool)
    live[0] = True
    whole = prepare_items(p.gallery[:10], p.banks, params, invgc)
    batch = prepare_items(p.gallery[10:], p.banks, params, invgc)
    for part in ("original",) + (("adjusted",) if invgc is not None else ()):
        view = getattr(whole, part).tombstone(live, p.banks)
        view = view.append(getattr(batch, part), p.banks)
        alive = np.concatenate([live, np.ones(4, bool)])
        assert view.live_size == int(alive.sum()) and view.size == 14
        np.testing.assert_array_equal(view.dead_rows, np.flatnonzero(~alive))
        gallery = np.concatenate([getattr(whole, part).embeddings, getattr(batch, part).embeddings])
        fresh = _fresh_view(gallery[alive], p, params)
        np.testing.assert_allclose(view.stats[alive], fresh.stats, atol=1e-12)  # row by row
        np.testing.assert_array_equal(view.activated[alive], fresh.activated)
        assert not view.activated[~alive].any()
        plan = get_normaliser("raw").plan(params, view.bank_sizes, 3, None)
        rows, _ = search(p.gallery[:3], view, plan, 14)
        assert rows.shape[1] == alive.sum() and alive[rows].all()
        assert alive[top1_raw(p.gallery[:3], view.embeddings, view.live)].all()
        # rescanned similarities come from other BLAS calls (gemv for one bank row): d·eps
        assert_views_equal(view.compacted(p.banks), fresh, atol=4 * gallery.shape[1] * 2**-23)


def _fresh_view(gallery, p, params):
    """A view of ``gallery`` built from scratch (its own stats: no InvGC on top)."""
    return prepare_items(gallery, p.banks, params, None).original


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
