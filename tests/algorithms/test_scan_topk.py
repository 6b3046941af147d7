"""The scan's per-row top-k selection (a group-maximum lower bound, then a partition of the
entries above it) against a full sort, including ties and rows where the bound does not pay."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms.scan import _candidates, _largest

from .conftest import PROPERTY, seeds


@given(
    seed=seeds,
    rows=st.integers(1, 6),
    cols=st.integers(1, 400),
    k=st.integers(1, 30),
    levels=st.sampled_from([0, 3, 50]),
    need_idx=st.booleans(),
)
@PROPERTY
def test_largest_equals_sorted(seed, rows, cols, k, levels, need_idx):
    """Same multiset of values as a full sort; the columns (if asked) hold those values and are
    distinct. ``levels`` > 0 draws from few values (ties everywhere, candidates overflow)."""
    rng = np.random.default_rng(seed)
    sims = rng.standard_normal((rows, cols)).astype(np.float32)
    if levels:
        sims = rng.integers(0, levels, (rows, cols)).astype(np.float32)
    k = min(k, cols)
    vals, idx = _largest(sims, k, need_idx=need_idx)
    want = -np.sort(-sims, axis=1)[:, :k]
    np.testing.assert_array_equal(-np.sort(-vals, axis=1), want)
    if need_idx:
        np.testing.assert_array_equal(np.take_along_axis(sims, idx, axis=1), vals)
        assert all(len(set(row)) == k for row in idx)


def test_bound_path_is_taken_on_wide_rows():
    """Wide rows of distinct values use the bound (not the whole-row partition) and keep every
    top-k entry among the candidates."""
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((5, 4000)).astype(np.float32)
    found = _candidates(sims, 20)
    assert found is not None
    vals, _ = found
    assert vals.shape[1] < sims.shape[1] // 4
    kth = -np.sort(-sims, axis=1)[:, 19]
    assert ((vals >= kth[:, None]).sum(axis=1) >= 20).all()
