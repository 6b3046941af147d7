"""The id-keyed bank state against obvious references: the robust scale from non-zero counts
equals RobustScale.of the full occurrence vector; merging batches keeps each bank item's
top-k of everything seen; a rescan set replaces only its rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.algorithms.metrics import RobustScale
from service.remote.banktop import IdTopK, robust_scale


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=60))
def test_robust_scale_from_the_non_zero_counts(occurrence: list[int]) -> None:
    full = np.array(occurrence, dtype=np.int64)
    got = robust_scale([c for c in occurrence if c], len(occurrence))
    want = RobustScale.of(full)
    assert (got.median, got.mad, got.scale) == (want.median, want.mad, want.scale)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.lists(st.integers(1, 6), min_size=1, max_size=4))
def test_merging_batches_keeps_the_top_k_of_everything(n: int, k: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(sum(sizes) * 31 + n * 7 + k)
    state = IdTopK.empty(n, k, 1)
    seen_ids: list[str] = []
    seen_sims: list[np.ndarray] = []
    for b, size in enumerate(sizes):
        ids = np.array([f"{b}-{i}" for i in range(size)], dtype=object)
        sims = rng.standard_normal((n, size)).astype(np.float32)
        idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        state = state.merge(IdTopK.of_batch(ids, idx, np.take_along_axis(sims, idx, 1), k, 1))
        seen_ids += ids.tolist()
        seen_sims.append(sims)
    every = np.concatenate(seen_sims, axis=1)
    for row in range(n):
        best = np.argsort(-every[row], kind="stable")[:k]
        width = min(k, every.shape[1])
        assert state.ids[row, :width].tolist() == [seen_ids[j] for j in best]
        assert all(i is None for i in state.ids[row, width:])
    assert state.activated == {i for i in state.ids[:, :1].ravel() if i is not None}


def test_holding_and_replace_touch_only_the_hit_rows() -> None:
    ids = np.array([["a", "b"], ["c", "d"], ["e", None]], dtype=object)
    top = IdTopK(ids, np.array([[3, 2], [3, 2], [1, -np.inf]], np.float32), 1)
    hit = np.flatnonzero(top.holding({"d", "x"}))
    assert hit.tolist() == [1]
    fresh = IdTopK(np.array([["c", "f"]], dtype=object), np.array([[3, 1]], np.float32), 1)
    after = top.replace(hit, fresh)
    assert after.ids.tolist() == [["a", "b"], ["c", "f"], ["e", None]]
    assert after.changed_rows(top).tolist() == [1]
    assert after.occurrence(2) == {"a": 1, "b": 1, "c": 1, "f": 1, "e": 1}
