"""Comparing the in-memory engine with the remote (Milvus) engine: same ids, scores and
similarities within a float32 bound derived from the maths."""

from __future__ import annotations

import itertools

import numpy as np

from service.algorithms import METHODS
from service.engine import Engine, SearchResult
from service.remote.engine import RemoteEngine

EPS32 = float(np.finfo(np.float32).eps)


def tolerance(engine: Engine, method: str, invgc: bool, d: int) -> float:
    """Both engines round an inner product of d+5 float32 terms: each error is at most
    (d+5)·eps·Σ|terms|, and Σ|terms| ≤ w·1 (unit vectors) + Σ_j |c_j|·max|stat_j|."""
    from service.algorithms import get_normaliser

    view = engine.state.view(invgc)
    plan = get_normaliser(method).plan(engine.norm, view.bank_sizes, 1, np.ones((1, 2), bool))
    magnitude = plan.weight + float(np.abs(plan.coefficients[0]) @ np.abs(view.stats).max(axis=0))
    return 2 * (d + 5) * EPS32 * (magnitude + float(np.abs(plan.offsets).max()))


def assert_close(a: SearchResult, b: SearchResult, tol: float, d: int) -> None:
    for ids_a, ids_b, sa, sb, ca, cb in zip(
        a.ids, b.ids, a.scores, b.scores, a.similarities, b.similarities, strict=True
    ):
        assert len(ids_a) == len(ids_b)
        np.testing.assert_allclose(sb, sa, atol=tol, rtol=0)
        # an exchange of two hits is allowed only between scores equal within the bound
        for rank, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)):
            if x != y:
                assert abs(sa[rank] - sb[rank]) <= tol
                assert y in ids_a and x in ids_b
        same = [r for r, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)) if x == y]
        np.testing.assert_allclose(cb[same], ca[same], atol=2 * d * EPS32, rtol=0)


def assert_equal_engines(exact: Engine, remote: RemoteEngine, queries: np.ndarray) -> None:
    assert (remote.version, remote.size) == (exact.state.version, exact.state.size)
    d = exact.dim
    views = (False, True) if exact.invgc is not None else (False,)
    for method, invgc in itertools.product(METHODS, views):
        a = exact.search(queries, k=10, method=method, invgc=invgc)
        b = remote.search(queries, k=10, method=method, invgc=invgc)
        assert_close(a, b, tolerance(exact, method, invgc, d), d)
