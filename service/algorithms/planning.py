"""Planning a method for a batch of queries: the one place that decides whether the raw top-1
pass runs, looks up its activation and asks the normaliser for the plan.

Every search path (the backends' template method, the offline evaluation, the sweeps, tests and
benchmarks) plans through :func:`plan_for`, so the rule "dynamic methods gate their bank terms
by the query's raw top-1 item; an empty gallery activates nothing" is stated once. How the raw
top-1 is found is the caller's business (a blocked numpy pass, an index search, a precomputed
array): it passes a callable, which is called only when the method is dynamic and the gallery
is not empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from service.algorithms.normalisers import Normaliser, QueryPlan, get_normaliser
from service.algorithms.stats import NormParams


class Plannable(Protocol):
    """What planning needs of a gallery: a :class:`~service.algorithms.views.GalleryView` in
    memory, or a view held elsewhere (Milvus) whose items are named by id."""

    @property
    def live_size(self) -> int:
        """Items in the gallery (an empty one activates nothing)."""
        ...

    @property
    def bank_sizes(self) -> tuple[int, int]: ...

    def activation(self, top1: Any) -> np.ndarray:
        """(m, 2) bool: each query's raw top-1 item (as ``top1()`` names it) in (A_BQ, A_BG)."""
        ...


def needs_top1(normaliser: Normaliser, view: Plannable) -> bool:
    """Whether planning ``normaliser`` on ``view`` needs the queries' raw top-1 rows."""
    return normaliser.dynamic and view.live_size > 0


def plan_for(
    method: str | Normaliser,
    params: NormParams,
    view: Plannable,
    m: int,
    top1: Callable[[], Any] | None = None,
) -> QueryPlan:
    """The plan of ``method`` for m queries on ``view``.

    ``top1()``: each query's raw top-1 item of ``view`` (rows, or ids: whatever
    ``view.activation`` takes), called only when
    :func:`needs_top1` (and required then). An empty gallery has no top-1, so nothing is
    activated there.
    """
    normaliser = get_normaliser(method) if isinstance(method, str) else method
    activated = None
    if needs_top1(normaliser, view):
        if top1 is None:
            raise ValueError(f"method {normaliser.name!r} needs the queries' raw top-1 rows")
        activated = view.activation(top1())
    elif normaliser.dynamic:
        activated = np.zeros((m, 2), dtype=bool)
    return normaliser.plan(params, view.bank_sizes, m, activated)
