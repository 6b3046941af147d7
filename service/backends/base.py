"""The search-backend interface: "search these vectors by inner product, plus bias columns".

A backend serves one :class:`~service.algorithms.GalleryView`. Because every method is
``w·s(q, g) + c(q)·stat(g)``, one index over ``[g, stat(g)]`` serves all methods exactly; the
query side supplies ``[w·q, c(q)]`` (``QueryPlan.query_coordinates``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from service.algorithms import GalleryView, QueryPlan


class BackendUnavailable(RuntimeError):
    """An external index (Milvus) failed or could not be reached. Nothing was changed in the
    service's state; the request can be retried (the API answers 503)."""


class SearchBackend(ABC):
    """Top-k search over one gallery view. Instances are immutable once built."""

    name: str
    #: whether it serves views with dead rows (``GalleryView.live``); if not, the engine
    #: removes rows at once (O(n·d)) instead of leaving tombstones
    tombstones: bool = True

    def __init__(
        self,
        view: GalleryView,
        ids: tuple[str, ...],
        previous: SearchBackend | None = None,
    ) -> None:
        """Serve ``view`` whose rows have ``ids``. ``previous`` is the backend of the state this
        one replaces (same view kind): a backend holding an external index can apply the
        difference instead of rebuilding. It must not change what ``previous`` serves."""
        self.view = view
        self.ids = ids

    @abstractmethod
    def search(
        self, queries: np.ndarray, plan: QueryPlan, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(m, k') gallery rows, best first, and their reported scores (float64, with offsets).

        ``allowed``: (n,) bool, the rows a metadata filter lets through (None: all). The result
        is then the ranking of all rows restricted to the allowed ones (k' ≤ their number)."""

    @abstractmethod
    def top1(self, queries: np.ndarray) -> np.ndarray:
        """(m,) row of each query's best gallery item by raw cosine (the dynamic methods' pass)."""
