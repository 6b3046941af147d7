"""The FAISS backend on a float16 gallery (``HUBLESS_STORAGE_DTYPE=float16``): rows widened to
float32 block by block on their way into the index, so flat is exact for the stored values and
the approximate indexes report exact scores, before and after changes.

Same tolerance as tests/backends/test_faiss.py (1e-5, float32 similarities): the float32 index
rows hold the float16 values exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.algorithms import METHODS, InvGCParams, prepare_items
from service.backends import ExactBackend, backend_factory
from service.backends.faiss import FaissBackend, HnswSettings, IvfSettings
from service.engine.engine import Engine

from .test_faiss import (
    NORM,
    K,
    assert_exact_scores,
    assert_same_results,
    method_search,
    recall,
)
from .test_faiss import demo as demo  # the module's real data fixture


@pytest.fixture(scope="module")
def half(demo: dict) -> dict:
    """The demo gallery rounded to float16 and prepared as stored (both views float16)."""
    gallery = demo["gallery"].astype(np.float16)
    prepared = prepare_items(gallery, demo["banks"], NORM, InvGCParams())
    views = {False: prepared.original, True: prepared.adjusted}
    assert {v.embeddings.dtype for v in views.values()} == {np.dtype(np.float16)}
    return {**demo, "gallery": gallery, "views": views}


@pytest.mark.parametrize("invgc", [False, True], ids=["original", "invgc"])
def test_float16_flat_returns_the_exact_ids_and_scores_for_every_method(half, invgc):
    view, ids = half["views"][invgc], half["ids"]
    exact, flat = ExactBackend(view, ids), FaissBackend(view, ids, index="flat")
    for method in METHODS:
        want = method_search(exact, half["queries"], method, K + 1)
        assert_same_results(method_search(flat, half["queries"], method, K + 1), want)


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_float16_ann_recall_and_exact_scores(half, index):
    view, ids = half["views"][True], half["ids"]
    exact = ExactBackend(view, ids)
    ann = FaissBackend(view, ids, index=index, hnsw=HnswSettings(), ivf=IvfSettings())
    for method in METHODS:
        want_rows, _ = method_search(exact, half["queries"], method)
        rows, scores = method_search(ann, half["queries"], method)
        assert recall(rows, want_rows) >= 0.95, method
        assert_exact_scores(ann, half["queries"], method, rows, scores)


def test_float16_changes_derive_the_index_and_stay_exact(half):
    """Upserts (float32 rows, rounded by the engine) and deletes derive each HNSW index from
    the previous one; flat rebuilds stay exact."""
    for index in ("hnsw", "flat"):
        factory = backend_factory("faiss", index=index, hnsw={"m": 16, "ef_construction": 64})
        rows = np.arange(2000)
        prepared = prepare_items(half["gallery"][rows], half["banks"], NORM, InvGCParams())
        ids = tuple(half["ids"][i] for i in rows)
        engine = Engine.from_prepared(
            ids, (None,) * len(ids), prepared, half["banks"], NORM, InvGCParams(), factory
        )
        new = range(2000, len(half["ids"]))
        vectors = half["gallery"][list(new)].astype(np.float32)
        engine.upsert([half["ids"][i] for i in new], vectors, [None] * len(new))
        engine.delete([half["ids"][i] for i in range(500, 560)])
        for invgc in (False, True):
            backend, view = engine.state.backend(invgc), engine.state.view(invgc)
            assert view.embeddings.dtype == np.float16
            assert backend.rebuilt == (index == "flat")
            exact = ExactBackend(view, engine.state.ids)
            for method in METHODS:
                want = method_search(exact, half["queries"], method)
                got = method_search(backend, half["queries"], method)
                if index == "flat":
                    assert_same_results(got, want)
                else:
                    assert recall(got[0], want[0]) >= 0.95, (invgc, method)
                    assert_exact_scores(backend, half["queries"], method, *got)
