"""Exact backend: blocked BLAS products over the gallery view, bias added per block.

The dynamic methods (dis, dualdis) need each query's raw top-1 before their plan exists, which
naively costs a second pass over the gallery. When the gallery fits one block for the batch (the
usual case: 8M rows for one query, 130k rows for 64 at the 32 MiB block budget), the raw pass
keeps its product ``Q Gᵀ`` and hands it to the biased pass of the same search (a local value of
:meth:`SearchBackend.search`), so DualDIS costs one product like DualIS.
"""

from __future__ import annotations

import numpy as np

from service.algorithms import QueryPlan, search, top1_raw
from service.algorithms.blocks import product_with
from service.algorithms.scoring import search_block_rows
from service.backends.base import Mask, Ranked, RawTop1, SearchBackend


class ExactBackend(SearchBackend):
    name = "exact"

    def _raw_top1(self, queries: np.ndarray) -> RawTop1:
        view = self.view
        if view.size > search_block_rows(view, queries.shape[0]):
            return RawTop1(top1_raw(queries, view.embeddings, view.live))
        product = product_with(queries, view.embeddings)  # one block (checked above)
        # tombstones are never a top-1; ``_ranked`` masks them too, so the product stays usable
        product[:, view.dead_rows] = -np.inf
        return RawTop1(product.argmax(axis=1), product)

    def _ranked(
        self, queries: np.ndarray, plan: QueryPlan, k: int, allowed: Mask, raw: RawTop1 | None
    ) -> Ranked:
        product = None if raw is None else raw.product
        return search(queries, self.view, plan, k, similarities=product, allowed=allowed)
