"""Prepared gallery views: one pass per bank, shared by InvGC and every statistic.

A :class:`GalleryView` is one searchable gallery variant (original or InvGC-adjusted) with
everything a method needs. :func:`prepare_items` turns a batch of raw items into their
original and adjusted parts with exactly four products ``items·BQᵀ``, ``items·BGᵀ``,
``items'·BQᵀ``, ``items'·BGᵀ``: the first two serve both LocalAdj and the original view's
stats. Views are immutable; :meth:`GalleryView.append` and :meth:`GalleryView.remove` return new
views and touch only what a change affects.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from service.algorithms.invgc import InvGCParams, invgc_adjust
from service.algorithms.stats import (
    BankTopK,
    NormParams,
    gallery_bank_scan,
    query_bank_scan,
    stats_from_scans,
)
from service.algorithms.validation import InputError, check_embeddings


@dataclass(frozen=True)
class Banks:
    """The two fixed banks, L2-normalised: query bank BQ (N_q, d), gallery bank BG (N_g, d)."""

    query_bank: np.ndarray
    gallery_bank: np.ndarray

    @classmethod
    def from_arrays(cls, query_bank: object, gallery_bank: object) -> Banks:
        bq = check_embeddings(query_bank, field="query_bank")
        bg = check_embeddings(gallery_bank, field="gallery_bank", dim=bq.shape[1])
        return cls(bq, bg.astype(bq.dtype, copy=False))

    @property
    def dim(self) -> int:
        return self.query_bank.shape[1]

    @property
    def sizes(self) -> tuple[int, int]:
        return self.query_bank.shape[0], self.gallery_bank.shape[0]


@dataclass(frozen=True)
class GalleryView:
    """One searchable gallery variant.

    embeddings: (n, d) unit rows. stats: (n, 4) stat columns (``STAT_COLUMNS``).
    query_top / gallery_top: each bank item's top-k rows, whose union is the activation set.
    bank_sizes: (|BQ|, |BG|).
    """

    embeddings: np.ndarray
    stats: np.ndarray
    query_top: BankTopK
    gallery_top: BankTopK
    bank_sizes: tuple[int, int]

    @property
    def size(self) -> int:
        return self.embeddings.shape[0]

    @cached_property
    def activated(self) -> np.ndarray:
        """(n, 2) bool: row is in (A_BQ, A_BG)."""
        return np.column_stack(
            [self.query_top.activated(self.size), self.gallery_top.activated(self.size)]
        )

    def append(self, batch: GalleryView, banks: Banks) -> GalleryView:
        """This view with ``batch`` (prepared alone) appended after the last row."""
        return GalleryView(
            np.concatenate([self.embeddings, batch.embeddings]),
            np.concatenate([self.stats, batch.stats]),
            self.query_top.merge(batch.query_top, self.size),
            self.gallery_top.merge(batch.gallery_top, self.size),
            self.bank_sizes,
        )

    def remove(self, keep: np.ndarray, banks: Banks) -> GalleryView:
        """This view without the rows where ``keep`` (n,) is False."""
        embeddings = self.embeddings[keep]
        return GalleryView(
            embeddings,
            self.stats[keep],
            self.query_top.remove(keep, embeddings, banks.query_bank),
            self.gallery_top.remove(keep, embeddings, banks.gallery_bank),
            self.bank_sizes,
        )


@dataclass(frozen=True)
class PreparedItems:
    """A batch prepared alone: its original view and, with InvGC on, its adjusted view."""

    original: GalleryView
    adjusted: GalleryView | None


def _view(
    items: np.ndarray, banks: Banks, norm: NormParams, neighbours: tuple[int, int] | None = None
) -> tuple[GalleryView, np.ndarray | None, np.ndarray | None]:
    """The view of ``items`` and, if LocalAdj neighbour counts are given, the neighbour sums."""
    k_q, k_g = neighbours or (None, None)
    qs = query_bank_scan(items, banks.query_bank, norm, neighbour_k=k_q, bank_topk=norm.dis_topk)
    gs = gallery_bank_scan(
        items, banks.gallery_bank, norm, neighbour_k=k_g, bank_topk=norm.dis_topk
    )
    view = GalleryView(
        items,
        stats_from_scans(qs, gs, norm),
        BankTopK(qs.bank_top_idx, qs.bank_top_sim, norm.dis_topk),
        BankTopK(gs.bank_top_idx, gs.bank_top_sim, norm.dis_topk),
        banks.sizes,
    )
    return view, qs.neighbour_sum, gs.neighbour_sum


def prepare_items(
    items: np.ndarray,
    banks: Banks,
    norm: NormParams,
    invgc: InvGCParams | None,
    *,
    gallery_mean: np.ndarray | None = None,
) -> PreparedItems:
    """Prepare normalised items (n, d): stats, activation top-k and, if ``invgc``, the
    InvGC-adjusted view. ``gallery_mean`` (full adjacency only): mean of the whole gallery
    the items belong to, defaulting to the items' own mean."""
    if items.shape[1] != banks.dim:
        raise InputError("gallery", f"expected dimension {banks.dim}, got {items.shape[1]}")
    local = invgc is not None and invgc.adjacency == "local"
    neighbours = (
        (invgc.neighbours(banks.sizes[0]), invgc.neighbours(banks.sizes[1])) if local else None
    )
    original, near_q, near_g = _view(items, banks, norm, neighbours)
    if invgc is None:
        return PreparedItems(original, None)
    sums = (near_q, near_g) if local else None
    adjusted = invgc_adjust(
        items,
        banks.query_bank,
        banks.gallery_bank,
        invgc,
        gallery_mean=gallery_mean,
        neighbour_sums=sums,
    )
    return PreparedItems(original, _view(adjusted, banks, norm)[0])


def adjusted_view(
    items: np.ndarray,
    banks: Banks,
    norm: NormParams,
    invgc: InvGCParams,
    *,
    gallery_mean: np.ndarray | None = None,
) -> GalleryView:
    """Only the InvGC-adjusted view of ``items``: what a full-adjacency gallery must rebuild
    when its mean changes (the original view of unchanged items stays valid)."""
    adjusted = invgc_adjust(
        items, banks.query_bank, banks.gallery_bank, invgc, gallery_mean=gallery_mean
    )
    return _view(adjusted, banks, norm)[0]
