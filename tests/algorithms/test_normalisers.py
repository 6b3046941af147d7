"""Normalisers: each method's similarity weight, stat coefficients, gating and offsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms import (
    METHODS,
    NORMALISERS,
    STAT_COLUMNS,
    InputError,
    Normaliser,
    dense_scores,
    get_normaliser,
    plan_queries,
    prepare_items,
)
from service.algorithms.augment import plan_coordinates

from .conftest import PROPERTY, make_problem, moderate_betas, seeds, small_params

ALL_ACTIVATIONS = np.array([[True, True], [True, False], [False, True], [False, False]])


def test_methods_registry():
    assert set(METHODS) == {"raw", "is", "dis", "dualis", "dualdis", "nnn", "csls", "dbsn"}
    for name in METHODS:
        normaliser = get_normaliser(name)
        assert isinstance(normaliser, Normaliser)
        assert normaliser is NORMALISERS[name]
        assert normaliser.name == name and normaliser.description
    assert {n for n in METHODS if get_normaliser(n).dynamic} == {"dis", "dualdis"}


@pytest.mark.parametrize("bad", ["nope", "IS", "", "dual-is"])
def test_unknown_method(bad):
    with pytest.raises(InputError, match=r"^method: ") as info:
        get_normaliser(bad)
    assert all(name in str(info.value) for name in METHODS)


def expected_weights(method: str, p) -> tuple[float, list[float]]:
    """(w, [c_lme_q, c_lme_g, c_nnn, c_csls, c_dbsn]) written from the SPEC table."""
    bq, bg = p.beta_query_bank, p.beta_gallery_bank
    dual = -1 / (bq + bg)
    return {
        "raw": (1.0, [0, 0, 0, 0, 0]),
        "is": (1.0, [-1 / bq, 0, 0, 0, 0]),
        "dis": (1.0, [-1 / bq, 0, 0, 0, 0]),
        "dualis": (1.0, [dual, dual, 0, 0, 0]),
        "dualdis": (1.0, [dual, dual, 0, 0, 0]),
        "nnn": (1.0, [0, 0, -p.nnn_alpha, 0, 0]),
        "csls": (2.0, [0, 0, 0, -1, 0]),
        "dbsn": (1.0, [0, 0, 0, 0, -1]),
    }[method]


@given(
    method=st.sampled_from(METHODS),
    beta_q=moderate_betas,
    beta_g=moderate_betas,
    alpha=st.floats(0, 2),
    nq=st.integers(1, 1000),
    ng=st.integers(1, 1000),
)
@PROPERTY
def test_plan_coefficients_and_offsets(method, beta_q, beta_g, alpha, nq, ng):
    p = small_params(beta_query_bank=beta_q, beta_gallery_bank=beta_g, nnn_alpha=alpha)
    normaliser = get_normaliser(method)
    weight, coef = expected_weights(method, p)
    np.testing.assert_allclose(normaliser.stat_weights(p), coef, rtol=1e-15)
    plan = normaliser.plan(p, (nq, ng), 4, ALL_ACTIVATIONS)
    assert plan.weight == weight
    assert plan.coefficients.shape == (4, len(STAT_COLUMNS)) and plan.offsets.shape == (4,)
    for row, (a_q, a_g) in enumerate(ALL_ACTIVATIONS):
        gate = [a_q, a_g, 1, 1, 1] if normaliser.dynamic else [1, 1, 1, 1, 1]
        want = [c * g for c, g in zip(coef, gate, strict=True)]
        np.testing.assert_allclose(plan.coefficients[row], want, rtol=1e-15)
        # the offset turns log-mean-exp back into log Z: c_q·log|BQ| + c_g·log|BG|; DBSN adds
        # τ·log a + 1 (a = 1/|BG|, the 1 from the cost 1 − s)
        want_offset = want[0] * math.log(nq) + want[1] * math.log(ng)
        if method == "dbsn":
            want_offset += 1 - p.dbsn_tau * math.log(ng)
        np.testing.assert_allclose(plan.offsets[row], want_offset, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("method", ["dis", "dualdis"])
def test_dynamic_plan_needs_activation(method):
    with pytest.raises(ValueError, match="activation"):
        get_normaliser(method).plan(small_params(), (3, 3), 2)


@pytest.mark.parametrize("method", ["raw", "is", "dualis", "nnn", "csls", "dbsn"])
def test_static_plan_ignores_activation(method):
    normaliser = get_normaliser(method)
    gated = normaliser.plan(small_params(), (5, 7), 4, ALL_ACTIVATIONS)
    plain = normaliser.plan(small_params(), (5, 7), 4)
    np.testing.assert_array_equal(gated.coefficients, plain.coefficients)
    np.testing.assert_array_equal(gated.offsets, plain.offsets)


@given(seed=seeds, method=st.sampled_from(METHODS))
@PROPERTY
def test_augmented_inner_product_equals_scores(seed, method):
    """SPEC: an inner-product index over [g, stat(g)] with queries [w·q, c(q)] serves every
    method exactly (up to the per-query offset)."""
    p = make_problem(seed)
    params = small_params()
    view = prepare_items(p.gallery, p.banks, params, None).original
    plan = plan_queries(get_normaliser(method), p.queries, view, params)
    coords = plan_coordinates(plan, p.queries)
    assert coords.shape == (len(p.queries), p.gallery.shape[1] + len(STAT_COLUMNS))
    items = np.hstack([view.embeddings, view.stats])
    got = coords @ items.T + plan.offsets[:, None]
    np.testing.assert_allclose(got, dense_scores(p.queries, view, plan), atol=1e-12)
