"""Prepared gallery views: one pass per bank, shared by InvGC and every statistic.

A :class:`GalleryView` is one searchable gallery variant (original or InvGC-adjusted) with
everything a method needs. :func:`prepare_items` turns a batch of raw items into their
original and adjusted parts with exactly four products ``items·BQᵀ``, ``items·BGᵀ``,
``items'·BQᵀ``, ``items'·BGᵀ``: the first two serve both LocalAdj and the original view's
stats. Views are immutable; :meth:`GalleryView.append` and :meth:`GalleryView.remove` return new
views and touch only what a change affects.

Appends are amortised O(rows added), not O(n·d): a view's arrays are the first n rows of
buffers with spare rows (:class:`GrowthBuffers`), shared with the view it was appended to.
Only the newest view of such a chain writes past its end, into rows no existing view sees, so
every view stays immutable (copying 100k × 384 float32 rows per change would cost ~25 ms).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from service.algorithms.invgc import InvGCParams, invgc_adjust
from service.algorithms.stats import (
    BankTopK,
    DbsnWeights,
    NormParams,
    dbsn_weights,
    gallery_bank_scan,
    query_bank_scan,
    spare_width,
    stats_from_scans,
)
from service.algorithms.validation import InputError, check_embeddings

_DBSN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Banks:
    """The two fixed banks, L2-normalised: query bank BQ (N_q, d), gallery bank BG (N_g, d).

    Also holds the banks' DBSN Sinkhorn weights per (τ, T), solved on first use: a statistic of
    the bank set, shared by every batch of items prepared against it."""

    query_bank: np.ndarray
    gallery_bank: np.ndarray
    _dbsn: dict[tuple[float, int], DbsnWeights] = field(
        default_factory=dict, repr=False, compare=False
    )

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

    def dbsn(self, norm: NormParams) -> DbsnWeights:
        """The Sinkhorn weights at ``norm``'s τ and T (solved once, then memoised)."""
        key = (norm.dbsn_tau, norm.dbsn_iterations)
        with _DBSN_LOCK:  # concurrent first users (export threads, upserts) solve it once
            if key not in self._dbsn:
                self._dbsn[key] = dbsn_weights(self.query_bank, self.gallery_bank, norm)
            return self._dbsn[key]

    def seed_dbsn(self, norm: NormParams, log_v: np.ndarray) -> None:
        """Adopt weights solved earlier for these banks (the precompute cache's copy)."""
        self._dbsn[(norm.dbsn_tau, norm.dbsn_iterations)] = DbsnWeights(log_v, norm.dbsn_tau)


#: default share of dead rows (tombstones) past which the engine drops them in the background
DEAD_SHARE = 0.1


class GrowthBuffers:
    """Row buffers with spare capacity, shared by a chain of snapshots that only append.

    Each snapshot holds ``buffer[:n]`` of every buffer (same row count); ``used`` is the row
    count of the newest one. A snapshot may append in place only if it *is* the newest
    (``n == used``): rows past ``used`` are seen by nobody. Anything else (an append to an older
    snapshot, e.g. after a failed change) reallocates, so no snapshot ever sees a write.
    """

    __slots__ = ("buffers", "used")

    #: spare rows on (re)allocation, as a share of the rows: 1/8 costs 12.5% memory and makes
    #: appends amortised O(8 rows copied per row added)
    SPARE_SHARE = 8

    def __init__(self, buffers: list[np.ndarray], used: int) -> None:
        self.buffers, self.used = buffers, used

    @classmethod
    def allocate(cls, like: Sequence[np.ndarray], rows: int) -> GrowthBuffers:
        """Empty buffers for ``rows`` rows (plus spare) shaped and typed like ``like``."""
        capacity = rows + max(16, rows // cls.SPARE_SHARE)
        return cls([np.empty((capacity, *a.shape[1:]), a.dtype) for a in like], 0)

    @property
    def capacity(self) -> int:
        return self.buffers[0].shape[0]

    def prefix(self) -> list[np.ndarray]:
        return [b[: self.used] for b in self.buffers]


def append_rows(
    arrays: Sequence[np.ndarray], growth: GrowthBuffers | None, extra: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], GrowthBuffers]:
    """``arrays`` (the first n rows of ``growth``'s buffers, if given) with ``extra`` appended.

    In place (O(rows added)) when ``arrays`` are the newest snapshot of ``growth`` and fit;
    otherwise a copy into new buffers with spare rows."""
    n, added = arrays[0].shape[0], extra[0].shape[0]
    if growth is None or growth.used != n or growth.capacity < n + added:
        growth = GrowthBuffers.allocate(arrays, n + added)
        for buffer, array in zip(growth.buffers, arrays, strict=True):
            buffer[:n] = array
    for buffer, rows in zip(growth.buffers, extra, strict=True):
        buffer[n : n + added] = rows
    growth.used = n + added
    return growth.prefix(), growth


def keep_rows(
    arrays: Sequence[np.ndarray], keep: np.ndarray
) -> tuple[list[np.ndarray], GrowthBuffers]:
    """The rows of ``arrays`` where ``keep`` is True, in new buffers with spare rows (so the
    appends that follow a deletion need no copy).

    A deletion removes few rows: the kept rows are copied as contiguous runs (memcpy speed,
    2-4x faster than boolean indexing on 100k × 384); many scattered removals fall back to
    ``np.compress``.
    """
    removed = np.flatnonzero(~keep)
    kept = keep.shape[0] - removed.shape[0]
    growth = GrowthBuffers.allocate(arrays, kept)
    growth.used = kept
    for buffer, array in zip(growth.buffers, arrays, strict=True):
        if removed.shape[0] > _MAX_RUNS:
            np.compress(keep, array, axis=0, out=buffer[:kept])
            continue
        at = start = 0
        for stop in [*removed.tolist(), keep.shape[0]]:
            buffer[at : at + stop - start] = array[start:stop]
            at, start = at + stop - start, stop + 1
    return growth.prefix(), growth


#: above this many removed rows, :func:`keep_rows` stops copying run by run
_MAX_RUNS = 256


@dataclass(frozen=True)
class GalleryView:
    """One searchable gallery variant.

    embeddings: (n, d) unit rows. stats: (n, len(STAT_COLUMNS)) stat columns (``STAT_COLUMNS``).
    query_top / gallery_top: each bank item's top-k rows, whose union is the activation set.
    bank_sizes: (|BQ|, |BG|). growth: the spare-row buffers ``embeddings`` and ``stats`` are
    the start of, if any (see :class:`GrowthBuffers`). live: (n,) bool, False at the rows of
    deleted or replaced items that are still in the arrays (tombstones, until a compaction);
    None when every row is live. Every reader of rows must skip the dead ones: searches do
    (:func:`~service.algorithms.scoring.search` and the backends), and no bank item's top-k
    holds one (:meth:`tombstone`).
    """

    embeddings: np.ndarray
    stats: np.ndarray
    query_top: BankTopK
    gallery_top: BankTopK
    bank_sizes: tuple[int, int]
    growth: GrowthBuffers | None = field(default=None, repr=False, compare=False)
    live: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Rows in the arrays, dead ones included (see :attr:`live_size`)."""
        return self.embeddings.shape[0]

    @cached_property
    def live_size(self) -> int:
        """Rows of items in the gallery (the rows minus the tombstones)."""
        return self.size if self.live is None else int(np.count_nonzero(self.live))

    @cached_property
    def dead_rows(self) -> np.ndarray:
        """(dead,) int64 rows of the tombstones, ascending (empty when all rows are live)."""
        return np.empty(0, np.int64) if self.live is None else np.flatnonzero(~self.live)

    def live_mask(self, allowed: np.ndarray | None = None) -> np.ndarray | None:
        """``allowed`` (n,) bool (a filter's rows, None for all) restricted to the live rows;
        None when that is every row."""
        if self.live is None:
            return allowed
        return self.live if allowed is None else allowed & self.live

    @cached_property
    def activated(self) -> np.ndarray:
        """(n, 2) bool: row is in (A_BQ, A_BG)."""
        return np.column_stack(
            [self.query_top.activated(self.size), self.gallery_top.activated(self.size)]
        )

    def activation(self, rows: np.ndarray) -> np.ndarray:
        """(m, 2) bool: ``rows`` in (A_BQ, A_BG) (the planner's view of a gallery)."""
        return self.activated[rows]

    def append(self, batch: GalleryView, banks: Banks) -> GalleryView:
        """This view with ``batch`` (prepared alone) appended after the last row: amortised
        O(batch rows + bank size), the activation top-k merged, not recomputed."""
        (embeddings, stats), growth = append_rows(
            (self.embeddings, self.stats), self.growth, (batch.embeddings, batch.stats)
        )
        live = self.live
        if live is not None:
            live = np.concatenate([live, np.ones(batch.size, dtype=bool)])
        return GalleryView(
            embeddings,
            stats,
            self.query_top.merge(batch.query_top, self.size),
            self.gallery_top.merge(batch.gallery_top, self.size),
            self.bank_sizes,
            growth,
            live,
        )

    def tombstone(self, live: np.ndarray, banks: Banks) -> GalleryView:
        """This view with the rows where ``live`` (n,) is False dead, left in place: O(n/8)
        for the mask plus the rescan of the bank items whose top-k held a newly dead row
        (over the live rows). Arrays and growth buffers are shared with this view."""
        return GalleryView(
            self.embeddings,
            self.stats,
            self.query_top.tombstone(live, self.embeddings, banks.query_bank),
            self.gallery_top.tombstone(live, self.embeddings, banks.gallery_bank),
            self.bank_sizes,
            self.growth,
            None if live.all() else live,
        )

    def compacted(self, banks: Banks) -> GalleryView:
        """This view with its dead rows dropped (live rows renumbered in order; one O(n·d)
        copy): what a fresh start on the live items builds."""
        return self if self.live is None else self.remove(self.live, banks)

    def remove(self, keep: np.ndarray, banks: Banks) -> GalleryView:
        """This view without the rows where ``keep`` (n,) is False (one O(n·d) copy; the bank
        items whose top-k lost a row are recomputed). Dead rows go too: the result has none."""
        keep = keep if self.live is None else keep & self.live
        (embeddings, stats), growth = keep_rows((self.embeddings, self.stats), keep)
        return GalleryView(
            embeddings,
            stats,
            self.query_top.remove(keep, self.embeddings, banks.query_bank),
            self.gallery_top.remove(keep, self.embeddings, banks.gallery_bank),
            self.bank_sizes,
            growth,
        )


@dataclass(frozen=True)
class PreparedItems:
    """A batch prepared alone: its original view and, with InvGC on, its adjusted view."""

    original: GalleryView
    adjusted: GalleryView | None


def _view(
    items: np.ndarray,
    banks: Banks,
    norm: NormParams,
    neighbours: tuple[int, int] | None = None,
    hub_topk: int = 0,
) -> tuple[GalleryView, np.ndarray | None, np.ndarray | None]:
    """The view of ``items`` and, if LocalAdj neighbour counts are given, the neighbour sums.

    ``hub_topk``: keep the query bank's top-k state max(dis_topk, hub_topk) wide (its first
    dis_topk columns are the activation set) for the hub screening's k-occurrence."""
    k_q, k_g = neighbours or (None, None)
    width = max(norm.dis_topk, hub_topk)
    q_ranks, g_ranks = width + spare_width(width), norm.dis_topk + spare_width(norm.dis_topk)
    qs = query_bank_scan(
        items, banks.query_bank, norm, banks.dbsn(norm), neighbour_k=k_q, bank_topk=q_ranks
    )
    gs = gallery_bank_scan(items, banks.gallery_bank, norm, neighbour_k=k_g, bank_topk=g_ranks)
    n = items.shape[0]
    view = GalleryView(
        items,
        stats_from_scans(qs, gs, norm),
        BankTopK.from_ranks(qs.bank_top_idx, qs.bank_top_sim, width, norm.dis_topk, n),
        BankTopK.from_ranks(gs.bank_top_idx, gs.bank_top_sim, norm.dis_topk, None, n),
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
    hub_topk: int = 0,
) -> PreparedItems:
    """Prepare normalised items (n, d): stats, activation top-k and, if ``invgc``, the
    InvGC-adjusted view. ``gallery_mean`` (full adjacency only): mean of the whole gallery
    the items belong to, defaulting to the items' own mean. ``hub_topk``: width of the
    original view's query-bank top-k kept for hub screening (raw scores on the original
    gallery; the adjusted view keeps only the activation sets)."""
    if items.shape[1] != banks.dim:
        raise InputError("gallery", f"expected dimension {banks.dim}, got {items.shape[1]}")
    local = invgc is not None and invgc.adjacency == "local"
    neighbours = (
        (invgc.neighbours(banks.sizes[0]), invgc.neighbours(banks.sizes[1])) if local else None
    )
    original, near_q, near_g = _view(items, banks, norm, neighbours, hub_topk)
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
    del sums, near_q, near_g  # two n×d arrays: free them before the adjusted view's scans
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
