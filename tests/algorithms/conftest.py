"""Shared test data for the algorithm-core tests: small random float64 problems and strategies.

Data is generated from a seed with numpy so hypothesis only has to search over integers
(fast shrinking, reproducible failures). Everything is float64 so comparisons with the naive
reference in :mod:`tests.support.reference` hold to 1e-6 (in practice ~1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from service.algorithms import Banks, NormParams

#: Settings for every property test here: modest example counts keep the suite well under 60 s.
PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

seeds = st.integers(min_value=0, max_value=2**32 - 1)
#: β from 1e-3 to 1000, log-uniform.
betas = st.floats(min_value=-3.0, max_value=3.0).map(lambda e: float(10.0**e))
#: β small enough for the naive reference's plain exp (|β·s| ≤ 30).
moderate_betas = st.floats(min_value=0.05, max_value=30.0)

METHODS_REF = ("raw", "is", "dis", "dualis", "dualdis", "nnn", "csls", "dbsn")


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Problem:
    gallery: np.ndarray
    query_bank: np.ndarray
    gallery_bank: np.ndarray
    queries: np.ndarray

    @property
    def banks(self) -> Banks:
        return Banks(self.query_bank, self.gallery_bank)


def make_problem(
    seed: int, *, n: int = 12, d: int = 6, nq: int = 15, ng: int = 11, m: int = 7
) -> Problem:
    """A random problem; queries are noisy copies of gallery items (so rankings mean something)."""
    rng = np.random.default_rng(seed)
    gallery = unit_rows(rng, n, d)
    picks = rng.integers(0, n, size=m)
    queries = unit(gallery[picks] + 0.5 * rng.normal(size=(m, d)))
    return Problem(gallery, unit_rows(rng, nq, d), unit_rows(rng, ng, d), queries)


def make_extreme_problem(seed: int, *, d: int = 5) -> Problem:
    """Similarities near ±1 everywhere: gallery items are (near-)duplicates and antipodes of
    bank items and of each other, queries equal or oppose gallery items."""
    rng = np.random.default_rng(seed)
    bq = unit_rows(rng, 6, d)
    bg = unit_rows(rng, 5, d)
    eps = 1e-9
    base = np.concatenate([bq[:3], -bq[3:5], bg[:2], -bg[2:3]])
    gallery = unit(np.concatenate([base, base + eps * rng.normal(size=base.shape), -base[:2]]))
    queries = unit(np.concatenate([gallery[:3], -gallery[3:5], gallery[6:7] + 1e-12]))
    return Problem(gallery, bq, bg, queries)


def small_params(**overrides: float) -> NormParams:
    """NormParams with neighbourhoods sized for the tiny banks of these tests."""
    values: dict = {
        "beta_query_bank": 1 / 1.99,
        "beta_gallery_bank": 3.0,
        "dis_topk": 1,
        "nnn_topk": 4,
        "nnn_alpha": 0.75,
        "csls_topk": 3,
    }
    values.update(overrides)
    return NormParams(**values)


def ref_kwargs(params: NormParams) -> dict:
    """The parameters of :func:`reference.method_scores` from a NormParams."""
    return {
        "beta_query_bank": params.beta_query_bank,
        "beta_gallery_bank": params.beta_gallery_bank,
        "dis_topk": params.dis_topk,
        "nnn_topk": params.nnn_topk,
        "nnn_alpha": params.nnn_alpha,
        "csls_topk": params.csls_topk,
        "dbsn_tau": params.dbsn_tau,
        "dbsn_iterations": params.dbsn_iterations,
    }


@pytest.fixture
def problem() -> Problem:
    return make_problem(20240611)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
