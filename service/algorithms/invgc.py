"""InvGC: inverse graph convolution on gallery embeddings (arXiv 2310.13276).

Each gallery item is pushed away from its neighbours in a bank X (N×d), with rate r:

- full adjacency: ``m_X(g) = normalize(g − (r/N) · (S[g] − mean(S)) X)``, ``S = G Xᵀ``;
- LocalAdj: keep only the K = max(1, floor(pool_rate·N)) largest raw similarities of the row
  (no centring): ``m_X(g) = normalize(g − (r/K) · Σ_{b in top-K} s(g,b) b)``.

Both banks are used and averaged: ``g' = normalize(0.5 m_BG(g) + 0.5 m_BQ(g))``. Queries are
never changed. An empty bank (a live query bank before its first row) pushes nothing:
``m_X(g) = normalize(g)``.

Full adjacency never needs S: ``(S[g] − μ) X = g (XᵀX) − μ Σ_b b`` and
``μ = mean(S) = mean(G) · mean(X)``, so each item costs O(d²) given the bank's d×d Gram
matrix, and the only coupling between gallery items is the gallery mean vector (pass it as
``gallery_mean`` to adjust a batch of new items exactly as the whole gallery would be).
LocalAdj items are independent of each other: a batch alone equals the batch within the gallery.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.algorithms.blocks import block_rows, row_blocks, work_dtype
from service.algorithms.params import check_params, param
from service.algorithms.scan import scan_bank
from service.algorithms.validation import InputError

Adjacency = Literal["local", "full"]


@dataclass(frozen=True)
class InvGCParams:
    """InvGC parameters, validated on construction.

    r_gallery_bank / r_query_bank: push rates against the gallery bank and the query bank (≥ 0).
    pool_rate: LocalAdj share of the bank kept as neighbours, in (0, 1].
    adjacency: "local" (LocalAdj, the default: items independent) or "full".
    """

    r_gallery_bank: float = param(0.2, "InvGC rate against the gallery bank", ge=0)
    r_query_bank: float = param(0.2, "InvGC rate against the query bank", ge=0)
    pool_rate: float = param(0.01, "LocalAdj: share of a bank kept", gt=0, le=1)
    adjacency: Adjacency = param(  # noqa: RUF009 (a field declaration, not a shared value)
        "local", "InvGC adjacency: 'local' (LocalAdj, per-item updates) or 'full'"
    )

    def __post_init__(self) -> None:
        check_params(self)
        if self.adjacency not in ("local", "full"):
            raise InputError("adjacency", f"expected 'local' or 'full', got {self.adjacency!r}")

    def neighbours(self, bank_size: int) -> int:
        """K, the LocalAdj neighbour count for a bank of ``bank_size`` items."""
        return max(1, math.floor(self.pool_rate * bank_size))


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def push_local(items: np.ndarray, neighbour_sum: np.ndarray, rate: float, k: int) -> np.ndarray:
    """``m_X`` for LocalAdj given ``Σ_{top-K} s·b`` (from :func:`scan_bank`)."""
    return _normalize(items - (rate / k) * neighbour_sum)


@dataclass(frozen=True)
class FullPush:
    """``m_X`` for full adjacency, from the bank's Gram matrix ``XᵀX`` (d×d, computed once)
    and the centring term ``μ·Σb``: no n×N matrix, O(d²) per item."""

    gram: np.ndarray
    centring: np.ndarray
    scale: float

    @classmethod
    def build(cls, bank: np.ndarray, rate: float, gallery_mean: np.ndarray) -> FullPush:
        if bank.shape[0] == 0:  # an empty bank (live query bank, no rows yet) pushes nothing
            d = bank.shape[1]
            return cls(np.zeros((d, d), bank.dtype), np.zeros(d, bank.dtype), 0.0)
        bank_sum = bank.sum(axis=0)
        mu = float(gallery_mean @ bank_sum) / bank.shape[0]  # mean(S) = mean(G)·mean(X)
        return cls(bank.T @ bank, mu * bank_sum, rate / bank.shape[0])

    def __call__(self, items: np.ndarray) -> np.ndarray:
        return _normalize(items - self.scale * (items @ self.gram - self.centring))


def combine(m_gallery_bank: np.ndarray, m_query_bank: np.ndarray) -> np.ndarray:
    """``g' = normalize(0.5·m_BG + 0.5·m_BQ)``."""
    return _normalize(0.5 * m_gallery_bank + 0.5 * m_query_bank)


Push = Callable[[slice], np.ndarray]


def invgc_adjust(
    items: np.ndarray,
    query_bank: np.ndarray,
    gallery_bank: np.ndarray,
    params: InvGCParams,
    *,
    gallery_mean: np.ndarray | None = None,
    neighbour_sums: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """InvGC-adjusted copies of ``items`` (n×d, normalised), unit length, same dtype (float16
    items are pushed in float32 and the result rounded once, as the items were).

    gallery_mean: (d,) mean of the whole normalised gallery, for full adjacency on a batch
    (defaults to the mean of ``items``, i.e. items are the whole gallery). Ignored by LocalAdj.
    neighbour_sums: LocalAdj's (query bank, gallery bank) neighbour sums if a scan already
    computed them (see :func:`service.algorithms.scan.scan_bank`); computed here otherwise.

    Written block by block into one output array: the only n×d allocation is the result.
    """
    pushes: list[Push] = []
    banks = ((query_bank, params.r_query_bank), (gallery_bank, params.r_gallery_bank))
    for which, (bank, rate) in enumerate(banks):
        if params.adjacency == "full":
            # float64: the engine keeps the mean of a changing gallery as a float64 running sum
            # (sum / n is numpy's mean, bitwise, and 0 for an empty gallery instead of NaN)
            mean = gallery_mean
            if mean is None:
                mean = items.sum(axis=0, dtype=np.float64) / max(1, items.shape[0])
            full = FullPush.build(bank, rate, mean.astype(work_dtype(items.dtype)))
            pushes.append(lambda rows, full=full: full(items[rows]))
            continue
        k = params.neighbours(bank.shape[0])
        if neighbour_sums is None:
            near = scan_bank(items, bank, neighbour_k=k).neighbour_sum
        else:
            near = neighbour_sums[which]
        pushes.append(
            lambda rows, near=near, rate=rate, k=k: push_local(items[rows], near[rows], rate, k)
        )
    push_query, push_gallery = pushes
    out = np.empty_like(items)
    for rows in row_blocks(items.shape[0], block_rows(items.shape[1], items.itemsize)):
        out[rows] = combine(push_gallery(rows), push_query(rows))
    return out
