"""The FAISS backend against the exact one on the bundled real demo data (WordNet/e5, d = 384).

Flat: the same ids and scores as exact for every method, InvGC on and off (1e-5; items whose
scores tie within 1e-5 may swap). HNSW (and IVF): recall@10 against exact ≥ 0.95 for every
method at the default settings, and an index derived from the previous state after upserts and
deletes serves like a fresh build (same recall; the items it returns carry their exact scores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.algorithms import (
    METHODS,
    Banks,
    GalleryView,
    InvGCParams,
    NormParams,
    check_embeddings,
    dense_scores,
    plan_for,
    prepare_items,
)
from service.backends import ExactBackend, SearchBackend, backend_factory
from service.backends.faiss import FaissBackend, HnswSettings, IvfSettings
from service.engine.engine import Engine
from tests.support import reference
from tests.support.backends import method_search as support_search

DEMO = Path(__file__).resolve().parents[2] / "service" / "data" / "demo"
TOL = 1e-5
K = 10
NORM = NormParams()


def _matrix(name: str) -> np.ndarray:
    return check_embeddings(np.load(DEMO / name).astype(np.float32), field=name)


@pytest.fixture(scope="module")
def demo() -> dict:
    """Real vectors: a 2,300-item gallery (test + val glosses), 2,000 + 2,000 banks, queries."""
    gallery = np.concatenate([_matrix("gallery.npy"), _matrix("val_gallery.npy")])
    banks = Banks(_matrix("query_bank.npy"), _matrix("gallery_bank.npy"))
    prepared = prepare_items(gallery, banks, NORM, InvGCParams())
    return {
        "gallery": gallery,
        "banks": banks,
        "views": {False: prepared.original, True: prepared.adjusted},
        "ids": tuple(f"g{i}" for i in range(gallery.shape[0])),
        "queries": _matrix("queries.npy")[:200],
    }


def method_search(
    backend: SearchBackend, queries: np.ndarray, method: str, k: int = K
) -> tuple[np.ndarray, np.ndarray]:
    """What the engine asks the backend for one request, with this module's parameters."""
    return support_search(backend, queries, method, NORM, k)


def assert_exact_scores(backend: SearchBackend, queries, method, rows, scores) -> None:
    """Whatever an approximate index returns, it reports those items' exact scores (under the
    plan its own top-1 pass gave)."""
    plan = plan_for(method, NORM, backend.view, len(queries), lambda: backend.top1(queries))
    dense = dense_scores(queries, backend.view, plan)
    np.testing.assert_allclose(np.take_along_axis(dense, rows, axis=1), scores, atol=TOL, rtol=0)


def assert_same_results(got: tuple, want: tuple) -> None:
    """Scores equal at every rank (1e-5); ids equal wherever the exact score is not tied."""
    (rows, scores), (want_rows, want_scores) = got, want
    assert rows.shape == want_rows.shape
    np.testing.assert_allclose(scores, want_scores, atol=TOL, rtol=0)
    if not rows.size:
        return
    gaps = np.abs(np.diff(want_scores, axis=1))
    big = np.full((want_scores.shape[0], 1), np.inf)
    isolated = (np.hstack([big, gaps]) > TOL) & (np.hstack([gaps, big]) > TOL)
    # the last rank can also tie with the (k+1)-th item, which we did not fetch
    isolated[:, -1] = False
    np.testing.assert_array_equal(rows[isolated], want_rows[isolated])


def recall(got_rows: np.ndarray, want_rows: np.ndarray) -> float:
    pairs = zip(got_rows.tolist(), want_rows.tolist(), strict=True)
    hits = [len(set(g) & set(w)) for g, w in pairs]
    return sum(hits) / want_rows.size


@pytest.mark.parametrize("invgc", [False, True], ids=["original", "invgc"])
def test_flat_returns_the_exact_ids_and_scores_for_every_method(demo, invgc):
    view, ids = demo["views"][invgc], demo["ids"]
    exact = ExactBackend(view, ids)
    flat = FaissBackend(view, ids, index="flat")
    for method in METHODS:
        want = method_search(exact, demo["queries"], method, K + 1)
        got = method_search(flat, demo["queries"], method, K + 1)
        assert_same_results(got, want)


@pytest.mark.parametrize("invgc", [False, True], ids=["original", "invgc"])
@pytest.mark.parametrize("kind", ["exact", "flat"])
def test_dbsn_equals_the_float64_reference(demo, kind, invgc):
    """Within 1e-5 (measured ≤ 1.5e-6 on three BLAS kernels): float32 similarities (error
    ~√d·eps32 each) carried through T log-sum-exp iterations, which average them."""
    view, ids = demo["views"][invgc], demo["ids"]
    backend = ExactBackend(view, ids) if kind == "exact" else FaissBackend(view, ids, index="flat")
    got = method_search(backend, demo["queries"], "dbsn", K + 1)
    banks = demo["banks"]
    want = reference.dbsn_top(
        view.embeddings,
        demo["queries"],
        banks.query_bank,
        banks.gallery_bank,
        K + 1,
        NORM.dbsn_tau,
        NORM.dbsn_iterations,
    )
    assert_same_results(got, want)


@pytest.mark.parametrize(
    ("index", "invgc"),
    [("hnsw", False), ("hnsw", True), ("ivf", True)],
    ids=["hnsw-original", "hnsw-invgc", "ivf-invgc"],
)
def test_ann_recall_at_10_is_at_least_095_for_every_method(demo, index, invgc):
    """At the default (recommended) settings; docs/performance.md has larger galleries."""
    view, ids = demo["views"][invgc], demo["ids"]
    exact = ExactBackend(view, ids)
    ann = FaissBackend(view, ids, index=index, hnsw=HnswSettings(), ivf=IvfSettings())
    for method in METHODS:
        want_rows, _ = method_search(exact, demo["queries"], method)
        rows, scores = method_search(ann, demo["queries"], method)
        assert recall(rows, want_rows) >= 0.95, method
        assert_exact_scores(ann, demo["queries"], method, rows, scores)


def _tiny(view: GalleryView, banks: Banks, rows: int) -> GalleryView:
    keep = np.zeros(view.size, bool)
    keep[:rows] = True
    return view.remove(keep, banks)


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("size", [0, 5])
def test_k_beyond_the_gallery_and_the_empty_gallery(demo, index, size):
    view = _tiny(demo["views"][True], demo["banks"], size)
    ids = demo["ids"][:size]
    exact, faiss = ExactBackend(view, ids), FaissBackend(view, ids, index=index)
    queries = demo["queries"][:7]
    for method in METHODS:
        got = method_search(faiss, queries, method, 50)
        assert got[0].shape == (7, size)
        assert_same_results(got, method_search(exact, queries, method, 50))
    np.testing.assert_array_equal(faiss.top1(queries), exact.top1(queries) if size else 0)


def _engine(demo: dict, rows: np.ndarray, factory) -> Engine:
    gallery = demo["gallery"][rows]
    ids = tuple(demo["ids"][i] for i in rows)
    prepared = prepare_items(gallery, demo["banks"], NORM, InvGCParams())
    return Engine.from_prepared(
        ids, (None,) * len(ids), prepared, demo["banks"], NORM, InvGCParams(), factory
    )


def test_incremental_hnsw_serves_like_a_fresh_build(demo):
    """Upserts (new and replaced items) and deletes through the engine derive each HNSW index
    from the previous one; the result searches like an index built from scratch."""
    light = {"m": 16, "ef_construction": 64, "ef_search": 128}  # derivation, not tuning
    factory = backend_factory("faiss", index="hnsw", hnsw=light)
    n = demo["gallery"].shape[0]
    engine = _engine(demo, np.arange(2000), factory)
    new = list(range(2000, n))
    replaced = list(range(100, 140))  # same ids, new vectors: tombstone + append
    vectors = demo["gallery"][new + [i + 1000 for i in replaced]]
    engine.upsert([demo["ids"][i] for i in new + replaced], vectors, [None] * len(vectors))
    engine.delete([demo["ids"][i] for i in range(500, 560)])
    state = engine.state
    for invgc in (False, True):
        backend = state.backend(invgc)
        assert isinstance(backend, FaissBackend) and not backend.rebuilt
        ids = state.catalog.ids  # by row (the deleted items' rows are dead)
        fresh = FaissBackend(state.view(invgc), ids, index="hnsw", hnsw=backend.hnsw)
        exact = ExactBackend(state.view(invgc), ids)
        for method in METHODS:
            want = method_search(exact, demo["queries"], method)
            derived_rows, derived_scores = method_search(backend, demo["queries"], method)
            assert recall(derived_rows, want[0]) >= 0.95, (invgc, method)
            fresh_recall = recall(method_search(fresh, demo["queries"], method)[0], want[0])
            assert abs(recall(derived_rows, want[0]) - fresh_recall) <= 0.02, (invgc, method)
            assert_exact_scores(backend, demo["queries"], method, derived_rows, derived_scores)
    # the engine's search maps rows back to the right ids
    result = engine.search(demo["queries"][:20], k=K, method="dualis", invgc=True)
    deleted = {demo["ids"][i] for i in range(500, 560)}
    assert not deleted & {i for ids in result.ids for i in ids}


def test_settings_choose_the_faiss_backend():
    from service.settings import Settings

    settings = Settings(backend="faiss", faiss_index="hnsw", faiss_ef_search=64)
    factory = backend_factory(settings.backend, **settings.backend_options())
    rng = np.random.default_rng(0)
    banks = Banks(*(check_embeddings(rng.normal(size=(50, 8)), field="b") for _ in range(2)))
    view = prepare_items(check_embeddings(rng.normal(size=(30, 8)), field="g"), banks, NORM, None)
    backend = factory(view.original, tuple(map(str, range(30))), None)
    assert isinstance(backend, FaissBackend)
    assert (backend.kind, backend.hnsw.ef_search) == ("hnsw", 64)
