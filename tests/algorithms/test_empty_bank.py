"""An empty query bank (a live query bank before its first served query) has no statistics.

Every method then serves its formula with the query-bank term absent (no bias, no
activation), and InvGC pushes nothing against that bank: checked against the naive reference.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms import (
    METHODS,
    Banks,
    InvGCParams,
    dense_scores,
    get_normaliser,
    plan_queries,
    prepare_items,
)
from tests.support import reference as ref

from .conftest import PROPERTY, make_problem, seeds, small_params


def absent_query_bank_scores(method, queries, gallery, gallery_bank, params) -> np.ndarray:
    """(m, n) SPEC scores with every query-bank term left out, one pair at a time."""
    lz_g = ref.log_z(gallery, gallery_bank, params.beta_gallery_bank)
    act_g = ref.activation_set(gallery, gallery_bank, params.dis_topk)
    beta_sum = params.beta_query_bank + params.beta_gallery_bank
    out = np.empty((len(queries), len(gallery)))
    for i, q in enumerate(queries):
        a_g = 1.0 if ref.top1(q, gallery) in act_g else 0.0
        for j, g in enumerate(gallery):
            s = ref.dot(q, g)
            out[i, j] = {
                "dualis": s - lz_g[j] / beta_sum,
                "dualdis": s - a_g * lz_g[j] / beta_sum,
                "csls": 2 * s,
            }.get(method, s)  # raw, is, dis, nnn: the raw similarity
    return out


@given(seed=seeds, method=st.sampled_from(METHODS))
@PROPERTY
def test_methods_on_an_empty_query_bank_drop_its_term(seed, method):
    p = make_problem(seed)
    params = small_params()
    banks = Banks(np.empty((0, p.gallery.shape[1])), p.gallery_bank)
    view = prepare_items(p.gallery, banks, params, None).original
    assert view.bank_sizes == (0, len(p.gallery_bank))
    assert not view.activated[:, 0].any()
    got = dense_scores(
        p.queries, view, plan_queries(get_normaliser(method), p.queries, view, params)
    )
    expected = absent_query_bank_scores(method, p.queries, p.gallery, p.gallery_bank, params)
    np.testing.assert_allclose(got, expected, atol=1e-9)


@given(seed=seeds, adjacency=st.sampled_from(["local", "full"]))
@PROPERTY
def test_invgc_pushes_nothing_against_an_empty_bank(seed, adjacency):
    p = make_problem(seed)
    invgc = InvGCParams(r_query_bank=0.3, r_gallery_bank=0.2, pool_rate=0.2, adjacency=adjacency)
    banks = Banks(np.empty((0, p.gallery.shape[1])), p.gallery_bank)
    adjusted = prepare_items(p.gallery, banks, small_params(), invgc).adjusted
    assert adjusted is not None
    if adjacency == "full":
        m_g = ref.invgc_full_bank(p.gallery, p.gallery_bank, invgc.r_gallery_bank)
    else:
        m_g = ref.invgc_local_bank(p.gallery, p.gallery_bank, invgc.r_gallery_bank, 0.2)
    expected = np.array(
        [ref.normalize(0.5 * m + 0.5 * g) for m, g in zip(m_g, p.gallery, strict=True)]
    )
    np.testing.assert_allclose(adjusted.embeddings, expected, atol=1e-12)
