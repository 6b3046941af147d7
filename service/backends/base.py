"""The search-backend interface: one call runs a whole search of one method.

A backend serves one :class:`~service.algorithms.GalleryView`. Because every method is
``w·s(q, g) + c(q)·stat(g)``, one index over ``[g, stat(g)]`` serves all methods exactly; the
query side supplies ``[w·q, c(q)]`` (:func:`~service.algorithms.augment.plan_coordinates`).

:meth:`SearchBackend.search` is a template method: the raw top-1 pass (dynamic methods only),
the plan (:func:`~service.algorithms.planning.plan_for`, the one planner) and the biased top-k
happen inside one call, and whatever the raw pass computed that the biased pass can reuse (the
exact backend's ``Q Gᵀ``) travels between the two steps as a local value, never as state on the
backend. Subclasses implement the two steps, :meth:`_raw_top1` and :meth:`_ranked`.

Construction computes what the backend needs, including, for a backend over an external index,
the difference to apply to it; :meth:`commit` applies that difference. The engine commits only
once the change log has accepted the change, so a constructor never writes anywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from service.algorithms import GalleryView, Normaliser, NormParams, QueryPlan
from service.algorithms.planning import plan_for

#: (n,) bool rows a search may return (a metadata filter), None: all
Mask = np.ndarray | None
#: (m, k') rows, best first, and their reported scores (float64, offsets included)
Ranked = tuple[np.ndarray, np.ndarray]


class BackendUnavailable(RuntimeError):
    """An external index (Milvus) failed or could not be reached. Nothing was changed in the
    service's state; the request can be retried (the API answers 503)."""


@dataclass(frozen=True)
class RawTop1:
    """The raw top-1 pass of a batch: (m,) rows, and the (m, n) raw product ``Q Gᵀ`` when the
    backend computed it whole and its biased pass can reuse it (None otherwise)."""

    rows: np.ndarray
    product: np.ndarray | None = None


@dataclass(frozen=True)
class Hits:
    """A search's answer: (m, k') gallery rows, best first, their reported scores (float64,
    offsets included) and the plan that scored them (diagnostics rank the truth with it)."""

    rows: np.ndarray
    scores: np.ndarray
    plan: QueryPlan


class SearchBackend(ABC):
    """Top-k search over one gallery view. Instances are immutable once built."""

    name: str

    def __init__(
        self,
        view: GalleryView,
        ids: tuple[str, ...],
        previous: SearchBackend | None = None,
    ) -> None:
        """Serve ``view`` whose rows have ``ids``. ``previous`` is the backend of the state this
        one replaces (same view kind): a backend can derive its index from it instead of a
        rebuild. It must not change what ``previous`` serves."""
        self.view = view
        self.ids = ids

    def search(
        self,
        queries: np.ndarray,
        method: str | Normaliser,
        params: NormParams,
        k: int,
        allowed: np.ndarray | None = None,
    ) -> Hits:
        """Top-k of ``method`` for (m, d) normalised ``queries``: the whole path in one call.

        ``allowed``: (n,) bool, the rows a metadata filter lets through (None: all; dead rows
        never pass, whatever the filter says, see :meth:`GalleryView.live_mask`). The result
        is then the ranking of all rows restricted to the allowed ones (k' ≤ their number). The
        raw top-1 pass of the dynamic methods stays over the whole gallery: the activation is a
        property of the query, not of the filter.
        """
        raw: RawTop1 | None = None

        def top1() -> np.ndarray:
            nonlocal raw
            raw = self._raw_top1(queries)
            return raw.rows

        plan = plan_for(method, params, self.view, queries.shape[0], top1)
        allowed = self.view.live_mask(allowed)  # dead rows (tombstones) are never found
        rows, scores = self._ranked(queries, plan, k, allowed, raw)
        return Hits(rows, scores, plan)

    def top1(self, queries: np.ndarray) -> np.ndarray:
        """(m,) row of each query's best gallery item by raw cosine (0 on an empty gallery)."""
        if self.view.live_size == 0:
            return np.zeros(queries.shape[0], np.int64)
        return self._raw_top1(queries).rows

    @abstractmethod
    def _raw_top1(self, queries: np.ndarray) -> RawTop1:
        """The raw top-1 pass over a view with live rows (the dynamic methods' first step);
        tombstones are never a top-1."""

    @abstractmethod
    def _ranked(
        self, queries: np.ndarray, plan: QueryPlan, k: int, allowed: Mask, raw: RawTop1 | None
    ) -> Ranked:
        """(m, k') rows, best first, and their reported scores under ``plan``; ``raw``: this
        search's raw top-1 pass, if it ran."""
