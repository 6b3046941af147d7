"""Exact backend: blocked BLAS products over the gallery view, bias added per block."""

from __future__ import annotations

import numpy as np

from service.algorithms import QueryPlan, search, top1_raw
from service.backends.base import SearchBackend


class ExactBackend(SearchBackend):
    name = "exact"

    def search(self, queries: np.ndarray, plan: QueryPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search(queries, self.view, plan, k)

    def top1(self, queries: np.ndarray) -> np.ndarray:
        return top1_raw(queries, self.view.embeddings)
