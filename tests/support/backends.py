"""One backend search as the engine asks for it, as ``(rows, scores)``."""

from __future__ import annotations

import numpy as np

from service.algorithms import NormParams
from service.backends import SearchBackend


def method_search(
    backend: SearchBackend, queries: np.ndarray, method: str, params: NormParams, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(m, k') rows and scores of one call: raw top-1 pass, plan and biased top-k."""
    hits = backend.search(queries, method, params, k)
    return hits.rows, hits.scores
