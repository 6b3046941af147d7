"""DBSN: the blocked log-domain Sinkhorn solver and the per-item stat against slow references.

Three independent checks of SPEC "DBSN": the plain-loop float64 reference in :mod:`reference`,
POT's ``ot.sinkhorn(..., method="sinkhorn_log")`` (pins the iteration order), and properties
(finite for extreme τ and similarities, invariant under permutations).

POT's convention differs in one documented way: it starts from ``log u = 0`` (u = 1) instead of
``u = 1/R``. Sinkhorn's updates are scale-covariant, so every POT iterate is ours with u scaled
by R and v by 1/R: ``log v_POT = log v − log R``, ``log u_POT = log u + log R``, and the plans
``diag(u) K diag(v)`` are equal. POT also updates v first, then u, as SPEC does.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms import Banks, get_normaliser, plan_queries, prepare_items
from service.algorithms.sinkhorn import dbsn_row_stat, sinkhorn_log_v
from service.algorithms.stats import DBSN, NormParams
from tests.support import reference as ref

from .conftest import PROPERTY, make_extreme_problem, make_problem, seeds, small_params, unit_rows

#: τ the plain-exp reference handles (K ≥ e^{-2/τ} stays far above float64's smallest normal)
ref_taus = st.sampled_from([0.01, 0.03, 0.1, 0.5, 2.0])
#: τ from 1e-4 to 10, log-uniform: far beyond what float32 (or plain exp) could take
extreme_taus = st.floats(min_value=-4.0, max_value=1.0).map(lambda e: float(10.0**e))


def banks_of(seed: int, rows: int, cols: int, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return unit_rows(rng, rows, d), unit_rows(rng, cols, d)


@given(
    seed=seeds,
    tau=ref_taus,
    iterations=st.integers(1, 12),
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    block=st.integers(1, 4),
    keep=st.booleans(),
)
@PROPERTY
def test_blocked_solver_matches_plain_loops(seed, tau, iterations, rows, cols, block, keep):
    """Blocks smaller than the bank, with and without the kept similarity blocks."""
    gallery_bank, query_bank = banks_of(seed, rows, cols)
    log_v = sinkhorn_log_v(
        gallery_bank, query_bank, tau, iterations, rows=block, keep_bytes=2**30 if keep else 0
    )
    want = np.log(ref.sinkhorn_v(gallery_bank, query_bank, tau, iterations))
    np.testing.assert_allclose(log_v, want, rtol=1e-10, atol=1e-9)


@given(seed=seeds, tau=ref_taus, iterations=st.integers(1, 12))
@PROPERTY
def test_item_stat_is_one_more_row_update(seed, tau, iterations):
    """The stat column and the dbsn score equal SPEC's ``s(q,g) + τ·log u(g)``, u(g) from the
    reference's v (items may be anything: not bank rows)."""
    p = make_problem(seed)
    params = small_params(dbsn_tau=tau, dbsn_iterations=iterations)
    view = prepare_items(p.gallery, p.banks, params, None).original
    v = ref.sinkhorn_v(p.gallery_bank, p.query_bank, tau, iterations)
    tau_log_u = np.array(
        [
            tau * math.log(ref.sinkhorn_u(g, p.query_bank, v, tau, len(p.gallery_bank)))
            for g in p.gallery
        ]
    )
    want_stat = 1 - tau * math.log(len(p.gallery_bank)) - tau_log_u
    np.testing.assert_allclose(view.stats[:, DBSN], want_stat, rtol=1e-10, atol=1e-10)
    plan = plan_queries(get_normaliser("dbsn"), p.queries, view, params)
    got = p.queries @ view.embeddings.T + plan.coefficients @ view.stats.T + plan.offsets[:, None]
    np.testing.assert_allclose(got, p.queries @ p.gallery.T + tau_log_u, rtol=0, atol=1e-10)


@given(seed=seeds, tau=ref_taus, iterations=st.integers(1, 12))
@PROPERTY
def test_dense_reference_matches_plain_loops(seed, tau, iterations):
    """The matrix reference the backend tests use on demo-sized data is the loop reference."""
    p = make_problem(seed)
    v = ref.sinkhorn_v(p.gallery_bank, p.query_bank, tau, iterations)
    loops = [
        tau * math.log(ref.sinkhorn_u(g, p.query_bank, v, tau, len(p.gallery_bank)))
        for g in p.gallery
    ]
    dense = ref.dbsn_tau_log_u_dense(p.gallery, p.query_bank, p.gallery_bank, tau, iterations)
    np.testing.assert_allclose(dense, loops, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tau", [0.01, 0.05, 1.0])
@pytest.mark.parametrize("iterations", [1, 2, 7])
def test_matches_pot_sinkhorn_log(tau, iterations):
    """POT pins the iteration semantics: v then u, a fixed count (stopThr=0 never stops it)."""
    gallery_bank, query_bank = banks_of(7, 13, 9, d=8)
    rows, cols = len(gallery_bank), len(query_bank)
    cost = 1.0 - gallery_bank @ query_bank.T
    _, log = ot.sinkhorn(
        np.full(rows, 1 / rows),
        np.full(cols, 1 / cols),
        cost,
        reg=tau,
        method="sinkhorn_log",
        numItermax=iterations,
        stopThr=0,
        log=True,
        warn=False,
    )
    log_v = sinkhorn_log_v(gallery_bank, query_bank, tau, iterations, rows=4)
    np.testing.assert_allclose(log_v, log["log_v"] + math.log(rows), rtol=1e-10, atol=1e-9)
    # the last u of POT is our per-item row update applied to the gallery-bank rows themselves
    stat = dbsn_row_stat(gallery_bank @ query_bank.T, log_v, tau)
    tau_log_u = 1 - tau * math.log(rows) - stat
    np.testing.assert_allclose(tau_log_u, tau * (log["log_u"] - math.log(rows)), atol=1e-9)


@given(seed=seeds, tau=extreme_taus, iterations=st.integers(1, 30))
@PROPERTY
def test_finite_for_extreme_tau_and_similarities(seed, tau, iterations):
    """Similarities of exactly ±1 (duplicates, antipodes) and τ from 1e-4 to 10: no NaN/inf."""
    p = make_extreme_problem(seed)
    params = small_params(dbsn_tau=tau, dbsn_iterations=iterations)
    log_v = sinkhorn_log_v(p.gallery_bank, p.query_bank, tau, iterations, rows=2)
    assert np.isfinite(log_v).all()
    view = prepare_items(
        p.gallery.astype(np.float32),
        Banks(p.query_bank.astype(np.float32), p.gallery_bank.astype(np.float32)),
        params,
        None,
    ).original
    assert np.isfinite(view.stats[:, DBSN]).all()
    plan = plan_queries(get_normaliser("dbsn"), p.queries.astype(np.float32), view, params)
    assert np.isfinite(plan.offsets).all()
    # |stored stat| stays O(1) for any τ (well scaled in float32): it lies within
    # [min s, max s] + τ·(log-sum-exp of log v) bounds, i.e. 1 − τ log R − τ log u
    assert np.abs(view.stats[:, DBSN]).max() < 10


@given(seed=seeds, tau=extreme_taus, iterations=st.integers(1, 12))
@PROPERTY
def test_permutation_invariance(seed, tau, iterations):
    """Permuting the gallery bank leaves v alone; permuting the query bank permutes v; permuting
    the gallery permutes the per-item stat."""
    p = make_problem(seed)
    rng = np.random.default_rng(seed)
    log_v = sinkhorn_log_v(p.gallery_bank, p.query_bank, tau, iterations, rows=3)
    perm_g = rng.permutation(len(p.gallery_bank))
    perm_q = rng.permutation(len(p.query_bank))
    shuffled = sinkhorn_log_v(p.gallery_bank[perm_g], p.query_bank[perm_q], tau, iterations)
    np.testing.assert_allclose(shuffled, log_v[perm_q], rtol=1e-9, atol=1e-9 * (1 + 1 / tau))
    params = small_params(dbsn_tau=tau, dbsn_iterations=iterations)
    stats = prepare_items(p.gallery, p.banks, params, None).original.stats[:, DBSN]
    perm = rng.permutation(len(p.gallery))
    again = prepare_items(p.gallery[perm], p.banks, params, None).original.stats[:, DBSN]
    np.testing.assert_allclose(again, stats[perm], rtol=0, atol=1e-12)


def test_float32_close_to_float64():
    """float32 banks and items: the error is the similarities' rounding, carried through T
    iterations (each log-sum-exp is 1/τ-Lipschitz in s, and the stat is τ times one): at most
    (2T + 1)·δ with δ ≤ d·eps32 the float32 product error (unit vectors)."""
    p = make_problem(3, d=16, nq=40, ng=30, n=25)
    params = NormParams(dbsn_tau=0.01, dbsn_iterations=10)
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    view64 = prepare_items(p.gallery, p.banks, params, None).original
    banks32 = Banks(f32(p.query_bank), f32(p.gallery_bank))
    view32 = prepare_items(f32(p.gallery), banks32, params, None).original
    bound = (2 * params.dbsn_iterations + 1) * 16 * np.finfo(np.float32).eps
    np.testing.assert_allclose(view32.stats[:, DBSN], view64.stats[:, DBSN], rtol=0, atol=bound)


def test_banks_memoise_and_seed_weights():
    p = make_problem(5)
    banks = p.banks
    params = small_params(dbsn_tau=0.05, dbsn_iterations=3)
    first = banks.dbsn(params)
    assert banks.dbsn(params) is first
    other = banks.dbsn(small_params(dbsn_tau=0.05, dbsn_iterations=4))
    assert not np.array_equal(other.log_v, first.log_v)
    fresh = p.banks
    fresh.seed_dbsn(params, first.log_v)
    assert fresh.dbsn(params).log_v is first.log_v


@pytest.mark.parametrize("bad", [{"dbsn_tau": 0.0}, {"dbsn_tau": -1.0}, {"dbsn_iterations": 0}])
def test_invalid_parameters(bad):
    with pytest.raises(ValueError, match="dbsn_"):
        small_params(**bad)
    with pytest.raises(ValueError, match="dbsn_iterations"):
        NormParams(dbsn_iterations=100_000)
