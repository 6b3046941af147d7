"""Exact backend: blocked BLAS products over the gallery view, bias added per block.

The dynamic methods (dis, dualdis) need each query's raw top-1 before their plan exists, which
naively costs a second pass over the gallery. When the gallery fits one block for the batch (the
usual case: 8M rows for one query, 130k rows for 64 at the 32 MiB block budget), :meth:`top1`
keeps its raw product ``Q Gᵀ`` for the calling thread and :meth:`search` of the *same* query
array reuses it, so DualDIS costs one product like DualIS.
"""

from __future__ import annotations

import threading

import numpy as np

from service.algorithms import GalleryView, QueryPlan, search, top1_raw
from service.algorithms.scoring import search_block_rows, widened
from service.backends.base import SearchBackend


class ExactBackend(SearchBackend):
    name = "exact"

    def __init__(
        self, view: GalleryView, ids: tuple[str, ...], previous: SearchBackend | None = None
    ) -> None:
        super().__init__(view, ids, previous)
        #: per thread: (queries, their raw product) from top1, consumed by the next search
        self._pending = threading.local()

    def search(
        self, queries: np.ndarray, plan: QueryPlan, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        pending = getattr(self._pending, "value", None)
        self._pending.value = None
        sims = pending[1] if pending is not None and pending[0] is queries else None
        return search(queries, self.view, plan, k, similarities=sims, allowed=allowed)

    def top1(self, queries: np.ndarray) -> np.ndarray:
        self._pending.value = None
        embeddings = self.view.embeddings
        if not 0 < self.view.size <= search_block_rows(self.view, queries.shape[0]):
            return top1_raw(queries, embeddings)
        sims = queries @ widened(embeddings).T  # one block (checked above)
        self._pending.value = (queries, sims)  # holding ``queries`` keeps the identity check safe
        return sims.argmax(axis=1)
