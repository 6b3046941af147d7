"""The backend's template method: one ``search`` call runs the raw top-1 pass, the plan and the
biased top-k, and equals the old two-call path (a separate top-1 pass, then a plan, then a
search) and the slow float64 loop reference, for the exact and the FAISS flat backends.

Tolerance, from the maths: every score is ``w·s + Σ c_j stat_j`` with unit vectors, so each
float32 sum of d products is off by at most d·eps32 (Σ|q_i g_i| ≤ 1), and each log-mean-exp
stat by about as much once divided by its β; with w ≤ 2 and at most two stat terms of weight
≤ 1, the score is off by a small multiple of (d + #stat columns)·eps32. 16× that covers it on
any BLAS kernel (measured errors are below 1e-6 here).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.algorithms import (
    METHODS,
    STAT_COLUMNS,
    Banks,
    NormParams,
    get_normaliser,
    prepare_items,
    search,
    top1_raw,
)
from service.backends import ExactBackend
from service.backends import exact as exact_module
from service.backends.faiss import FaissBackend
from tests.support import reference

D, N, M, K = 16, 40, 12, 8
PARAMS = NormParams(nnn_topk=8, csls_topk=5, dbsn_iterations=3)
TOL = 16 * (D + len(STAT_COLUMNS)) * float(np.finfo(np.float32).eps)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, D))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module", params=[0, 1])
def problem(request: pytest.FixtureRequest) -> dict:
    rng = np.random.default_rng(request.param)
    gallery, query_bank, gallery_bank = _unit(rng, N), _unit(rng, 30), _unit(rng, 25)
    queries = gallery[rng.integers(0, N, M)] + 0.4 * rng.normal(size=(M, D))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims = np.sort(queries @ gallery.T, axis=1)
    # the float32 top-1 (and so the activation) is the float64 one: no near tie at the top
    assert np.all(sims[:, -1] - sims[:, -2] > 10 * TOL)
    banks = Banks(query_bank.astype(np.float32), gallery_bank.astype(np.float32))
    view = prepare_items(gallery.astype(np.float32), banks, PARAMS, None).original
    return {
        "view": view,
        "queries32": queries.astype(np.float32),
        "f64": (queries, gallery, query_bank, gallery_bank),
    }


def _reference(problem: dict, method: str) -> np.ndarray:
    """(m, n) float64 scores of SPEC's definitions, one (q, g) pair at a time."""
    fields = ("beta_query_bank", "beta_gallery_bank", "dis_topk", "nnn_topk", "nnn_alpha")
    fields += ("csls_topk", "dbsn_tau", "dbsn_iterations")
    kwargs = {name: getattr(PARAMS, name) for name in fields}
    return reference.method_scores(method, *problem["f64"], **kwargs)


def _two_calls(view, queries: np.ndarray, method: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The path before the template method: a top-1 call, a plan, a search call."""
    normaliser = get_normaliser(method)
    activated = view.activated[top1_raw(queries, view.embeddings)] if normaliser.dynamic else None
    plan = normaliser.plan(PARAMS, view.bank_sizes, queries.shape[0], activated)
    return search(queries, view, plan, k)


def _assert_ranks_like(rows: np.ndarray, scores: np.ndarray, dense: np.ndarray) -> None:
    """Each returned row scores what the reference says (within TOL), and rank r holds a row
    whose reference score is the r-th best (within TOL): equal top-k up to near ties."""
    got = np.take_along_axis(dense, rows, axis=1)
    np.testing.assert_allclose(scores, got, atol=TOL, rtol=0)
    best = -np.sort(-dense, axis=1)[:, : rows.shape[1]]
    np.testing.assert_allclose(got, best, atol=2 * TOL, rtol=0)
    assert all(len(set(r)) == len(r) for r in rows.tolist())


@pytest.mark.parametrize("method", METHODS)
def test_one_call_equals_the_two_call_path_and_the_reference(problem: dict, method: str) -> None:
    view, queries = problem["view"], problem["queries32"]
    ids = tuple(map(str, range(view.size)))
    old_rows, old_scores = _two_calls(view, queries, method, K)
    dense = _reference(problem, method)
    for backend in (ExactBackend(view, ids), FaissBackend(view, ids, index="flat")):
        hits = backend.search(queries, method, PARAMS, K)
        if isinstance(backend, ExactBackend):  # the same float32 products: the same answer
            np.testing.assert_array_equal(hits.rows, old_rows)
            np.testing.assert_array_equal(hits.scores, old_scores)
        else:
            np.testing.assert_allclose(hits.scores, old_scores, atol=TOL, rtol=0)
        _assert_ranks_like(hits.rows, hits.scores, dense)
        # the plan handed back is the one that scored the hits
        expected = get_normaliser(method).plan(
            PARAMS,
            view.bank_sizes,
            M,
            view.activated[top1_raw(queries, view.embeddings)]
            if method in ("dis", "dualdis")
            else None,
        )
        np.testing.assert_array_equal(hits.plan.coefficients, expected.coefficients)


@pytest.mark.parametrize("method", ["dis", "dualdis"])
def test_the_exact_backend_without_the_reused_product(
    problem: dict, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gallery past one block: the raw pass is the blocked top-1 and the biased pass computes
    its own products; the answer is the same as with the product reused."""
    view, queries = problem["view"], problem["queries32"]
    backend = ExactBackend(view, tuple(map(str, range(view.size))))
    reused = backend.search(queries, method, PARAMS, K)
    monkeypatch.setattr(exact_module, "search_block_rows", lambda view, m: 7)
    assert backend._raw_top1(queries).product is None
    blocked = backend.search(queries, method, PARAMS, K)
    np.testing.assert_array_equal(blocked.rows, reused.rows)
    np.testing.assert_allclose(blocked.scores, reused.scores, atol=TOL, rtol=0)


def test_concurrent_searches_share_no_state(problem: dict) -> None:
    """No hand-off between calls: threads searching different queries on one backend at once
    get exactly what each gets alone."""
    view, queries = problem["view"], problem["queries32"]
    backend = ExactBackend(view, tuple(map(str, range(view.size))))
    batches = [queries[i : i + 3] for i in range(0, M, 3)]
    alone = [backend.search(b, "dualdis", PARAMS, K) for b in batches]
    together: list = [None] * len(batches)

    def run(i: int) -> None:
        for _ in range(20):
            together[i] = backend.search(batches[i], "dualdis", PARAMS, K)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(together, alone, strict=True):
        np.testing.assert_array_equal(got.rows, want.rows)
        np.testing.assert_array_equal(got.scores, want.scores)


def test_an_empty_gallery_plans_without_a_top1_pass() -> None:
    rng = np.random.default_rng(3)
    banks = Banks(_unit(rng, 5).astype(np.float32), _unit(rng, 5).astype(np.float32))
    view = prepare_items(np.empty((0, D), np.float32), banks, PARAMS, None).original
    for backend in (ExactBackend(view, ()), FaissBackend(view, (), index="flat")):
        hits = backend.search(_unit(rng, 2).astype(np.float32), "dualdis", PARAMS, 5)
        assert hits.rows.shape == (2, 0)
        assert not hits.plan.coefficients.any()  # nothing activated: raw scores
