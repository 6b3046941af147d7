"""Every method's scores and rankings against the naive SPEC definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms import (
    METHODS,
    InvGCParams,
    dense_scores,
    get_normaliser,
    plan_queries,
    prepare_items,
    ranks_of,
    search,
    top1_raw,
)
from tests.support import reference as ref

from .conftest import (
    PROPERTY,
    Problem,
    betas,
    make_extreme_problem,
    make_problem,
    moderate_betas,
    ref_kwargs,
    seeds,
    small_params,
    unit,
    unit_rows,
)

ATOL = 1e-9  # well inside the required 1e-6; float64 agreement is ~1e-13 in practice


def view_of(p: Problem, params, invgc=None, adjusted=False):
    prepared = prepare_items(p.gallery, p.banks, params, invgc)
    return prepared.adjusted if adjusted else prepared.original


def scores_and_search(method, p, view, params, k=None):
    plan = plan_queries(get_normaliser(method), p.queries, view, params)
    dense = dense_scores(p.queries, view, plan)
    idx, val = search(p.queries, view, plan, k or view.size)
    return dense, idx, val


def assert_same_ranking(idx, val, naive, atol=ATOL):
    """search's (idx, val) is the naive ranking: its scores are the naive scores of its items,
    in non-increasing order, and its top list is the naive top list (up to exact ties)."""
    m, k = idx.shape
    for i in range(m):
        np.testing.assert_allclose(val[i], naive[i, idx[i]], atol=atol)
        want = ref.order_desc(naive[i])[:k]
        np.testing.assert_allclose(val[i], naive[i, want], atol=atol)
        gaps = np.diff(np.sort(naive[i])[::-1][: k + 1])
        if k and (gaps.size == 0 or np.abs(gaps).min() > 1e-7):
            assert idx[i].tolist() == want


# ----------------------------------------------------------------------------- every method


@given(
    seed=seeds,
    method=st.sampled_from(METHODS),
    beta_q=moderate_betas,
    beta_g=moderate_betas,
    k=st.integers(1, 3),
    topk=st.integers(1, 20),
    invgc=st.sampled_from([None, "local", "full"]),
)
@PROPERTY
def test_scores_and_rankings_match_naive(seed, method, beta_q, beta_g, k, topk, invgc):
    p = make_problem(seed)
    params = small_params(
        beta_query_bank=beta_q,
        beta_gallery_bank=beta_g,
        dis_topk=k,
        nnn_topk=topk,
        csls_topk=21 - topk,
        nnn_alpha=0.5 + 0.1 * k,
    )
    adjust = None if invgc is None else InvGCParams(0.3, 0.2, 0.2, invgc)
    view = view_of(p, params, adjust, adjusted=invgc is not None)
    dense, idx, val = scores_and_search(method, p, view, params)
    # composition: the method runs on the gallery that is searched (adjusted when InvGC is on)
    gallery = view.embeddings
    if invgc is not None:
        gallery = ref.invgc(
            p.gallery,
            p.query_bank,
            p.gallery_bank,
            r_gallery_bank=0.3,
            r_query_bank=0.2,
            pool_rate=0.2,
            adjacency=invgc,
        )
        np.testing.assert_allclose(view.embeddings, gallery, atol=1e-10)
    naive = ref.method_scores(
        method, p.queries, gallery, p.query_bank, p.gallery_bank, **ref_kwargs(params)
    )
    np.testing.assert_allclose(dense, naive, atol=ATOL)
    assert idx.shape == (len(p.queries), len(p.gallery))
    assert val.dtype == np.float64
    assert_same_ranking(idx, val, naive)


@given(seed=seeds, method=st.sampled_from(METHODS), k=st.integers(1, 20))
@PROPERTY
def test_search_top_k(seed, method, k):
    p = make_problem(seed)
    params = small_params()
    view = view_of(p, params)
    _, idx, val = scores_and_search(method, p, view, params, k)
    assert idx.shape == (len(p.queries), min(k, len(p.gallery)))
    naive = ref.method_scores(
        method, p.queries, p.gallery, p.query_bank, p.gallery_bank, **ref_kwargs(params)
    )
    assert_same_ranking(idx, val, naive)


@given(seed=seeds)
@PROPERTY
def test_top1_raw_matches_naive(seed):
    p = make_problem(seed, n=30, m=20)
    got = top1_raw(p.queries, p.gallery)
    assert got.tolist() == [ref.top1(q, p.gallery) for q in p.queries]


def test_top1_raw_ties_pick_first_row():
    g = unit(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    q = unit(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert top1_raw(q, g).tolist() == [1, 0]


# ----------------------------------------------------------------------------- DualIS


@given(seed=seeds, beta_q=st.floats(0.05, 20.0), beta_g=st.floats(0.05, 20.0))
@PROPERTY
def test_dualis_ranks_as_the_papers_product(seed, beta_q, beta_g):
    p = make_problem(seed)
    params = small_params(beta_query_bank=beta_q, beta_gallery_bank=beta_g)
    view = view_of(p, params)
    dense, idx, _ = scores_and_search("dualis", p, view, params)
    product = ref.dualis_product(p.queries, p.gallery, p.query_bank, p.gallery_bank, beta_q, beta_g)
    # our score is log(IS_BQ · IS_BG) / (β_q + β_g), exactly (SPEC)
    np.testing.assert_allclose(dense, np.log(product) / (beta_q + beta_g), atol=ATOL)
    for i in range(len(p.queries)):
        assert idx[i].tolist() == ref.order_desc(product[i])


def test_dualis_default_betas_rank_as_product(problem):
    params = small_params()  # the released code's β: 1/1.99 on BQ, 3 on BG
    view = view_of(problem, params)
    _, idx, _ = scores_and_search("dualis", problem, view, params)
    product = ref.dualis_product(
        problem.queries,
        problem.gallery,
        problem.query_bank,
        problem.gallery_bank,
        params.beta_query_bank,
        params.beta_gallery_bank,
    )
    for i in range(len(problem.queries)):
        assert idx[i].tolist() == ref.order_desc(product[i])


# ----------------------------------------------------------------------------- DIS / DualDIS


def four_case_problem(seed: int) -> tuple[Problem, dict[int, tuple[bool, bool]]]:
    """A gallery whose activation sets are known by construction.

    Gallery rows 0..5 are basis vectors e0..e5 (plus random items far from every bank item).
    Every query-bank item is close to e0 or e1, every gallery-bank item to e0 or e2, so
    A_BQ = {0, 1} and A_BG = {0, 2}. Queries close to e0, e1, e2, e3 have top-1 rows 0..3 and
    therefore activate (both, BQ only, BG only, neither) in that order.
    """
    rng = np.random.default_rng(seed)
    d = 10
    eye = np.eye(d)
    gallery = np.concatenate([eye[:6], 0.3 * unit_rows(rng, 4, d) + eye[6:10]])
    gallery = unit(gallery)
    bq = unit(eye[[0, 1, 0, 1, 0, 1, 1]] + 0.15 * rng.normal(size=(7, d)))
    bg = unit(eye[[0, 2, 2, 0, 2]] + 0.15 * rng.normal(size=(5, d)))
    targets = [0, 1, 2, 3, 0, 1, 2, 3, 4, 7]
    queries = unit(eye[targets] + 0.1 * rng.normal(size=(len(targets), d)))
    expected = {0: (True, True), 1: (True, False), 2: (False, True), 3: (False, False)}
    return Problem(gallery, bq, bg, queries), expected


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("method", ["dis", "dualdis"])
def test_dynamic_methods_cover_all_activation_cases(seed, method):
    p, expected = four_case_problem(seed)
    params = small_params(beta_query_bank=2.0, beta_gallery_bank=5.0)
    act_q = ref.activation_set(p.gallery, p.query_bank, 1)
    act_g = ref.activation_set(p.gallery, p.gallery_bank, 1)
    assert (act_q, act_g) == ({0, 1}, {0, 2})
    cases = []
    for q in p.queries:
        t = ref.top1(q, p.gallery)
        cases.append((t in act_q, t in act_g))
        if t in expected:
            assert cases[-1] == expected[t]
    # the data covers every case: (both, BQ only, BG only, neither)
    assert set(cases) == {(True, True), (True, False), (False, True), (False, False)}

    view = view_of(p, params)
    assert set(np.flatnonzero(view.activated[:, 0])) == act_q
    assert set(np.flatnonzero(view.activated[:, 1])) == act_g
    dense, idx, val = scores_and_search(method, p, view, params)
    naive = ref.method_scores(
        method, p.queries, p.gallery, p.query_bank, p.gallery_bank, **ref_kwargs(params)
    )
    np.testing.assert_allclose(dense, naive, atol=ATOL)
    assert_same_ranking(idx, val, naive)

    # per case, the score is s minus exactly the activated banks' terms
    s = ref.similarities(p.queries, p.gallery)
    lz_q = ref.log_z(p.gallery, p.query_bank, params.beta_query_bank)
    lz_g = ref.log_z(p.gallery, p.gallery_bank, params.beta_gallery_bank)
    for i, (a_q, a_g) in enumerate(cases):
        if method == "dis":
            want = s[i] - a_q * lz_q / params.beta_query_bank
        else:
            beta = params.beta_query_bank + params.beta_gallery_bank
            want = s[i] - (a_q * lz_q + a_g * lz_g) / beta
        np.testing.assert_allclose(dense[i], want, atol=ATOL)
        if not a_q and not (method == "dualdis" and a_g):
            np.testing.assert_allclose(dense[i], s[i], atol=ATOL)  # left unnormalised


@pytest.mark.parametrize("seed", range(3))
def test_dualdis_with_every_query_activated_equals_dualis(seed):
    p, _ = four_case_problem(seed)
    p = Problem(p.gallery, p.query_bank, p.gallery_bank, p.queries[[0, 4]])  # top-1 = row 0
    params = small_params(beta_query_bank=2.0, beta_gallery_bank=5.0)
    view = view_of(p, params)
    dualdis, _, _ = scores_and_search("dualdis", p, view, params)
    dualis, _, _ = scores_and_search("dualis", p, view, params)
    np.testing.assert_allclose(dualdis, dualis, atol=1e-12)


def test_query_equal_to_gallery_item_in_and_out_of_activation_set():
    """A query identical to a gallery item has that item as top-1: activated iff it is in A."""
    p, _ = four_case_problem(0)
    queries = p.gallery[[0, 1, 2, 3, 5]]
    p = Problem(p.gallery, p.query_bank, p.gallery_bank, queries)
    params = small_params(beta_query_bank=1.0, beta_gallery_bank=1.0)
    view = view_of(p, params)
    plan = plan_queries(get_normaliser("dualdis"), p.queries, view, params)
    gate = plan.coefficients[:, :2] != 0
    both, bq_only, bg_only, neither = [True, True], [True, False], [False, True], [False, False]
    assert gate.tolist() == [both, bq_only, bg_only, neither, neither]
    dense = dense_scores(p.queries, view, plan)
    naive = ref.method_scores(
        "dualdis", p.queries, p.gallery, p.query_bank, p.gallery_bank, **ref_kwargs(params)
    )
    np.testing.assert_allclose(dense, naive, atol=ATOL)


# ----------------------------------------------------------------------------- CSLS and NNN


@given(seed=seeds, topk=st.integers(1, 20))
@PROPERTY
def test_csls_ranks_as_full_csls(seed, topk):
    p = make_problem(seed)
    params = small_params(csls_topk=topk)
    view = view_of(p, params)
    dense, idx, _ = scores_and_search("csls", p, view, params)
    kw = ref_kwargs(params)
    ours = ref.method_scores("csls", p.queries, p.gallery, p.query_bank, p.gallery_bank, **kw)
    full = ref.method_scores("csls_full", p.queries, p.gallery, p.query_bank, p.gallery_bank, **kw)
    np.testing.assert_allclose(dense, ours, atol=ATOL)
    # the omitted query term r(q) is a per-query constant ...
    r_q = np.array([ref.mean_topk(ref.similarities([q], p.gallery)[0], topk) for q in p.queries])
    np.testing.assert_allclose(dense - full, np.tile(r_q[:, None], (1, len(p.gallery))), atol=ATOL)
    # ... so the ranking is full CSLS's
    for i in range(len(p.queries)):
        assert idx[i].tolist() == ref.order_desc(full[i])


@given(seed=seeds, topk=st.integers(1, 20), alpha=st.floats(0.0, 3.0))
@PROPERTY
def test_nnn_matches_naive(seed, topk, alpha):
    p = make_problem(seed)
    params = small_params(nnn_topk=topk, nnn_alpha=alpha)
    view = view_of(p, params)
    dense, idx, val = scores_and_search("nnn", p, view, params)
    naive = ref.method_scores(
        "nnn", p.queries, p.gallery, p.query_bank, p.gallery_bank, **ref_kwargs(params)
    )
    np.testing.assert_allclose(dense, naive, atol=ATOL)
    assert_same_ranking(idx, val, naive)


# ----------------------------------------------------------------------------- robustness


@given(seed=seeds, method=st.sampled_from(METHODS), beta_q=betas, beta_g=betas)
@PROPERTY
def test_scores_finite_for_any_beta_and_extreme_similarities(seed, method, beta_q, beta_g):
    p = make_extreme_problem(seed)
    params = small_params(beta_query_bank=beta_q, beta_gallery_bank=beta_g)
    prepared = prepare_items(p.gallery, p.banks, params, InvGCParams(0.2, 0.2, 0.5))
    for view in (prepared.original, prepared.adjusted):
        plan = plan_queries(get_normaliser(method), p.queries, view, params)
        assert np.isfinite(plan.coefficients).all() and np.isfinite(plan.offsets).all()
        assert np.isfinite(dense_scores(p.queries, view, plan)).all()
        idx, val = search(p.queries, view, plan, 5)
        assert np.isfinite(val).all() and idx.shape == (len(p.queries), 5)
        truth = np.arange(len(p.queries)) % view.size
        ranks = ranks_of(p.queries, view, plan, truth)
        assert ((ranks >= 1) & (ranks <= view.size)).all()


@given(seed=seeds, method=st.sampled_from(METHODS), k=st.integers(1, 3))
@PROPERTY
def test_permuting_gallery_permutes_search_results(seed, method, k):
    p = make_problem(seed)
    params = small_params(dis_topk=k)
    perm = np.random.default_rng(seed).permutation(len(p.gallery))
    shuffled = Problem(p.gallery[perm], p.query_bank, p.gallery_bank, p.queries)
    _, idx, val = scores_and_search(method, p, view_of(p, params), params, 5)
    _, idx_p, val_p = scores_and_search(method, shuffled, view_of(shuffled, params), params, 5)
    np.testing.assert_allclose(val_p, val, atol=1e-12)
    for row, row_p in zip(idx, idx_p, strict=True):
        assert set(perm[row_p].tolist()) == set(row.tolist())


@pytest.mark.parametrize("method", METHODS)
def test_float32_view_close_to_float64(problem, method):
    params = small_params()
    p32 = Problem(
        *(
            x.astype(np.float32)
            for x in (problem.gallery, problem.query_bank, problem.gallery_bank, problem.queries)
        )
    )
    view64, view32 = view_of(problem, params), view_of(p32, params)
    assert view32.embeddings.dtype == np.float32 and view32.stats.dtype == np.float32
    s64, _, _ = scores_and_search(method, problem, view64, params)
    s32, _, _ = scores_and_search(method, p32, view32, params)
    np.testing.assert_allclose(s32, s64, atol=1e-4)


# ----------------------------------------------------------------------------- ranks_of


@given(seed=seeds, method=st.sampled_from(METHODS), invgc=st.booleans())
@PROPERTY
def test_ranks_of_matches_naive_rank(seed, method, invgc):
    p = make_problem(seed, n=15, m=10)
    params = small_params()
    view = view_of(p, params, InvGCParams(0.3, 0.3, 0.2) if invgc else None, adjusted=invgc)
    truth = np.random.default_rng(seed).integers(0, len(p.gallery), size=len(p.queries))
    plan = plan_queries(get_normaliser(method), p.queries, view, params)
    naive = ref.method_scores(
        method, p.queries, view.embeddings, p.query_bank, p.gallery_bank, **ref_kwargs(params)
    )
    got = ranks_of(p.queries, view, plan, truth)
    assert got.dtype.kind == "i"
    assert got.tolist() == [ref.rank(naive[i], int(truth[i])) for i in range(len(truth))]


def test_ranks_of_top1_is_rank_one(problem):
    params = small_params()
    view = view_of(problem, params)
    for method in METHODS:
        plan = plan_queries(get_normaliser(method), problem.queries, view, params)
        idx, _ = search(problem.queries, view, plan, 3)
        for col in range(3):
            assert ranks_of(problem.queries, view, plan, idx[:, col]).tolist() == [col + 1] * len(
                problem.queries
            )


def duplicate_gallery_problem(seed: int) -> Problem:
    """Every gallery item appears three times: duplicates of the true item tie with it."""
    rng = np.random.default_rng(seed)
    d = 5
    base = unit_rows(rng, 4, d)
    gallery = np.concatenate([base, base, base])
    queries = unit(base + 1e-3 * rng.normal(size=base.shape))
    return Problem(gallery, unit_rows(rng, 7, d), unit_rows(rng, 6, d), queries)


def test_ranks_of_does_not_count_exact_duplicates_as_higher():
    params = small_params(nnn_topk=3, csls_topk=2)
    wrong = []
    for seed in range(20):
        p = duplicate_gallery_problem(seed)
        view = view_of(p, params)
        for method in METHODS:
            plan = plan_queries(get_normaliser(method), p.queries, view, params)
            dense = dense_scores(p.queries, view, plan)
            for copy in range(3):
                truth = np.arange(4) + 4 * copy
                got = ranks_of(p.queries, view, plan, truth)
                # exact duplicates score the same: naive rank with a 1e-12 tie tolerance
                want = [1 + int(np.sum(dense[i] > dense[i, truth[i]] + 1e-12)) for i in range(4)]
                if got.tolist() != want:
                    wrong.append((seed, method, copy, got.tolist(), want))
    assert not wrong, wrong[:5]
