"""The bank-side state of the remote mode: each bank item's top-k gallery *ids* (not rows).

:class:`~service.algorithms.stats.BankTopK` numbers gallery items by row, which needs the whole
gallery in the process; here an item is its id, so the state stays bank-sized (N × k ids and
similarities) however large the gallery. The activation sets of DIS/DualDIS are the ids in its
first ``active`` columns, and hub screening's k-occurrence counts the first k columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from service.algorithms.metrics import MAD_TO_SIGMA, RobustScale


@dataclass(frozen=True)
class IdTopK:
    """ids: (N, k) object array (None where the gallery has fewer than k items), sims: (N, k)
    float32 (−inf there), best first; ``active``: columns forming the activation set."""

    ids: np.ndarray
    sims: np.ndarray
    active: int

    @classmethod
    def empty(cls, n: int, k: int, active: int) -> IdTopK:
        ids = np.full((n, k), None, dtype=object)
        return cls(ids, np.full((n, k), -np.inf, np.float32), active)

    @classmethod
    def of_batch(cls, ids: np.ndarray, idx: np.ndarray, sim: np.ndarray, k: int, active: int):
        """A batch's own top-k (rows ``idx`` within the batch) with the batch's ids."""
        out = cls.empty(idx.shape[0], k, active)
        width = min(k, idx.shape[1])
        out.ids[:, :width] = ids[idx[:, :width]]
        out.sims[:, :width] = sim[:, :width]
        return out

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def merge(self, other: IdTopK, rows: np.ndarray | None = None) -> IdTopK:
        """The top-k of both (``other`` covers the bank items ``rows``, default all); on equal
        similarities the entries already here stay first."""
        rows = np.arange(self.ids.shape[0]) if rows is None else rows
        ids = np.concatenate([self.ids[rows], other.ids], axis=1)
        sims = np.concatenate([self.sims[rows], other.sims], axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
        out_ids, out_sims = self.ids.copy(), self.sims.copy()
        out_ids[rows] = np.take_along_axis(ids, order, axis=1)
        out_sims[rows] = np.take_along_axis(sims, order, axis=1)
        return IdTopK(out_ids, out_sims, self.active)

    def replace(self, rows: np.ndarray, fresh: IdTopK) -> IdTopK:
        """With the bank items ``rows`` replaced by ``fresh`` (their rescans)."""
        ids, sims = self.ids.copy(), self.sims.copy()
        ids[rows], sims[rows] = fresh.ids, fresh.sims
        return IdTopK(ids, sims, self.active)

    def holding(self, gone: Collection[str]) -> np.ndarray:
        """Bank items whose top-k holds one of the ``gone`` ids (they need a rescan)."""
        if not gone or not self.ids.size:
            return np.zeros(self.ids.shape[0], dtype=bool)
        gone = set(gone)
        flat = np.fromiter((i in gone for i in self.ids.ravel()), bool, self.ids.size)
        return flat.reshape(self.ids.shape).any(axis=1)

    def changed_rows(self, before: IdTopK) -> np.ndarray:
        """Bank items whose entries differ from ``before``'s."""
        return np.flatnonzero(
            (self.ids != before.ids).any(axis=1) | (self.sims != before.sims).any(axis=1)
        )

    @cached_property
    def activated(self) -> frozenset[str]:
        """The activation set: every id in the first ``active`` columns."""
        return frozenset(i for i in self.ids[:, : self.active].ravel() if i is not None)

    def occurrence(self, k: int) -> Counter[str]:
        """Bank k-occurrence of every id that has one (the others have 0)."""
        return Counter(i for i in self.ids[:, :k].ravel() if i is not None)


def robust_scale(counts: Collection[int], n: int) -> RobustScale:
    """:meth:`RobustScale.of` of an (n,) occurrence vector given only its non-zero ``counts``
    (the other n − len(counts) items occur 0 times): no per-gallery-item array."""
    values = np.sort(np.asarray(list(counts), dtype=np.float64))
    zeros = n - values.size
    if n == 0:
        return RobustScale(0.0, 0.0, 1.0)
    median = _median(values, 0.0, zeros, n)
    deviations = np.sort(np.abs(values - median))
    mad = _median(deviations, abs(median), zeros, n)
    return RobustScale(median, mad, MAD_TO_SIGMA * mad if mad > 0 else 1.0)


def _median(values: np.ndarray, constant: float, repeats: int, n: int) -> float:
    """np.median of ``values`` (sorted) plus ``repeats`` copies of ``constant`` (n in all)."""
    merged_vals = np.concatenate([[constant], values])
    weights = np.concatenate([[repeats], np.ones(values.size, np.int64)])
    order = np.argsort(merged_vals, kind="stable")
    ends = np.cumsum(weights[order])  # exclusive end position of each value's run

    def at(position: int) -> float:
        return float(merged_vals[order][np.searchsorted(ends, position, side="right")])

    return (at((n - 1) // 2) + at(n // 2)) / 2
