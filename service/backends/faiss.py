"""FAISS backend: one inner-product index per view over ``[g, stat(g)]`` serves every method.

Every method scores ``w·s(q, g) + c(q)·stat(g)`` (plus a per-query offset), so an index over the
augmented gallery rows ``[g, stat(g)]`` (d + 5 float32 columns) searched with
``[w·q, c(q)]`` (:func:`~service.algorithms.augment.plan_coordinates`) ranks by exactly the
method's score; the backend adds ``plan.offsets`` to the inner products, as the exact backend
does. The raw top-1 pass (the dynamic methods' first step) searches the same index with the
stat coefficients zeroed: the inner product is then ``q·g`` itself, so no second index (and no
second copy of the gallery) is needed. (A numpy product for the flat index's top-1 is faster
alone, but numpy's BLAS threads and FAISS's OpenMP threads taking turns slow each other down:
measured 50 ms for top-1 + search of one query at n = 100k against 35 ms with both in FAISS;
docs/performance.md.)

A float16 gallery (``HUBLESS_STORAGE_DTYPE=float16``) is widened to float32 one bounded block
at a time on its way into the index (``_Layout.gallery``); the index's own vectors are float32
(FAISS's fp16 scalar quantizer would halve them, and stays exact with each stat column split
in two float16 halves, but searched 4.5–8× and built HNSW 12× slower here: docs/performance.md).

Three index kinds (setting ``HUBLESS_FAISS_INDEX``):

- ``flat`` (``IndexFlatIP``): exact; rebuilt from the view on every change (one O(n·d) copy).
- ``hnsw`` (``IndexHNSWFlat``, inner product): approximate, for large galleries. The stat
  columns are stored **centred and rescaled**, ``(stat − μ)·σ``, and queries use ``c/σ`` with
  ``c·μ`` added back to the score, which is exact algebra. Without it, the near-constant stat
  columns (``lme_gallery_bank`` ≈ 2.5 on every item) dominate the inner products between
  gallery rows and HNSW's graph degenerates (recall@10 ≈ 0.05 on the WordNet/e5 data); centred
  and scaled so the widest stat column spreads like ``stat_spread/√d`` (one embedding
  coordinate's spread times ``stat_spread``), recall@10 is ≥ 0.99 for every method at
  ``ef_search`` = 128 (see docs/performance.md). Changes are applied incrementally: rows
  unchanged since the previous state keep their index slots, new and replaced rows are added to
  a *clone* of the previous index (the previous state keeps serving its own, untouched), and
  deleted or replaced rows become tombstones filtered out at search time. The index is rebuilt
  when tombstones exceed ``REBUILD_DEAD_SHARE`` of it or when rows changed in place (full
  adjacency InvGC rewrites every adjusted row).
- ``ivf`` (``IndexIVFFlat``, inner product, ``nlist`` k-means lists, ``nprobe`` searched): the
  same stat layout and incremental changes as ``hnsw`` (new rows go to the lists of the trained
  quantizer; a rebuild retrains). Builds in minutes where HNSW takes hours (1M items on two
  cores), at a higher search cost for the same recall (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np

from service.algorithms import STAT_COLUMNS, GalleryView, QueryPlan, search, top1_raw
from service.algorithms.augment import plan_coordinates
from service.algorithms.blocks import block_rows, row_blocks
from service.backends.base import Mask, Ranked, RawTop1, SearchBackend

#: Rebuild an HNSW index from scratch once this share of its slots are tombstones.
REBUILD_DEAD_SHARE = 0.25
_STATS = len(STAT_COLUMNS)
INDEXES = ("flat", "hnsw", "ivf")
#: Query batches from this size on use BLAS in flat search. faiss-cpu ships with 128,000 (all
#: practical batches take its per-query SIMD scan): at n = 100k, d = 512 a batch of 64 then takes
#: 425 ms instead of 50 ms (benchmarks/bench_search.py). 20 is FAISS's long-standing default.
BLAS_THRESHOLD = 20
faiss.cvar.distance_compute_blas_threshold = min(
    faiss.cvar.distance_compute_blas_threshold, BLAS_THRESHOLD
)


@dataclass(frozen=True)
class HnswSettings:
    """HNSW parameters: graph degree ``m``, build and search beam widths, stat-column spread.

    Defaults measured on real data (docs/performance.md): recall@10 ≥ 0.99 for every method.
    """

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    stat_spread: float = 1.5


@dataclass(frozen=True)
class IvfSettings:
    """IVF parameters: ``nlist`` lists (default ``4·√n``), ``nprobe`` searched, k-means sample
    ``train_per_list · nlist`` rows, and the stat-column spread (as for HNSW).

    Defaults measured on vectors made from real ones (docs/performance.md): recall@10 ≥ 0.958
    for every method at 100k and 1M; ``nprobe`` = 32 gives ≈ 0.87–0.89.
    """

    nlist: int | None = None
    nprobe: int = 128
    train_per_list: int = 64
    stat_spread: float = 1.5

    def lists(self, n: int) -> int:
        return max(1, min(n, self.nlist or round(4 * np.sqrt(n))))


@dataclass(frozen=True)
class _Layout:
    """How the stat columns are stored: ``(stat − centre) · scale`` (exact for any values)."""

    centre: np.ndarray  # (len(STAT_COLUMNS),) float32
    scale: float

    @classmethod
    def identity(cls) -> _Layout:
        return cls(np.zeros(_STATS, np.float32), 1.0)

    @classmethod
    def spread(cls, view: GalleryView, stat_spread: float) -> _Layout:
        """Centred; the widest column's standard deviation becomes ``stat_spread / √d``."""
        if view.size == 0:
            return cls.identity()
        widest = float(view.stats.std(axis=0).max())
        scale = stat_spread / np.sqrt(view.embeddings.shape[1]) / widest if widest > 0 else 1.0
        return cls(view.stats.mean(axis=0).astype(np.float32), scale)

    def gallery(self, view: GalleryView, rows: slice | np.ndarray) -> np.ndarray:
        """(b, d+5) float32 index rows of the view's ``rows`` (float16 rows widened here)."""
        emb = view.embeddings[rows]
        out = np.empty((emb.shape[0], emb.shape[1] + _STATS), np.float32)
        out[:, : emb.shape[1]] = emb
        stats = out[:, emb.shape[1] :]
        stats[:] = view.stats[rows]
        if self.scale != 1.0 or self.centre.any():
            stats -= self.centre
            stats *= np.float32(self.scale)
        return out

    def queries(self, queries: np.ndarray, plan: QueryPlan) -> tuple[np.ndarray, np.ndarray]:
        """(m, d+5) float32 index queries and the (m,) float64 score correction ``c·centre``."""
        coords = np.ascontiguousarray(plan_coordinates(plan, queries), dtype=np.float32)
        if self.scale != 1.0:
            coords[:, -_STATS:] /= np.float32(self.scale)
        return coords, plan.coefficients @ self.centre.astype(np.float64)


class FaissBackend(SearchBackend):
    """Search one gallery view with a FAISS flat or HNSW inner-product index (see module doc)."""

    name = "faiss"

    def __init__(
        self,
        view: GalleryView,
        ids: tuple[str, ...],
        previous: SearchBackend | None = None,
        *,
        index: str = "flat",
        hnsw: HnswSettings | dict | None = None,
        ivf: IvfSettings | dict | None = None,
    ) -> None:
        super().__init__(view, ids, previous)
        if index not in INDEXES:
            raise ValueError(f"unknown FAISS index {index!r}; expected one of {INDEXES}")
        self.kind = index
        self.hnsw = HnswSettings(**hnsw) if isinstance(hnsw, dict) else hnsw or HnswSettings()
        self.ivf = IvfSettings(**ivf) if isinstance(ivf, dict) else ivf or IvfSettings()
        self.dim = view.embeddings.shape[1] + _STATS
        #: index slot of each view row, and view row of each slot (-1: tombstone); None: identity
        self._slot_of_row: np.ndarray | None = None
        self._row_of_slot: np.ndarray | None = None
        self._selector: faiss.IDSelector | None = None
        self._bitmap: np.ndarray | None = None  # kept alive for the selector
        self.rebuilt = True  # False when the index was derived from ``previous`` (for tests/logs)
        if (
            isinstance(previous, FaissBackend)
            and previous.kind == index
            and _same_rows(view, previous)
        ):
            self._share(previous)  # only tombstones changed: the index serves as it is
            return
        derivable = (
            isinstance(previous, FaissBackend) and previous.kind == index and index != "flat"
        )
        if derivable and self._derive(previous):  # type: ignore[arg-type]
            return
        spread = {"hnsw": self.hnsw.stat_spread, "ivf": self.ivf.stat_spread}.get(index)
        self._layout = _Layout.identity() if spread is None else _Layout.spread(view, spread)
        self._index = self._new_index()
        self._add_rows(self._index, np.arange(view.size))

    # --- building -------------------------------------------------------------------------

    def _new_index(self) -> faiss.Index:
        if self.kind == "flat" or (self.kind == "ivf" and self.view.size == 0):
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf":
            return self._trained_ivf()
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.hnsw.ef_construction
        index.hnsw.efSearch = self.hnsw.ef_search
        return index

    def _trained_ivf(self) -> faiss.Index:
        """An IVF index whose k-means lists are trained on a sample of the view's rows."""
        n, nlist = self.view.size, self.ivf.lists(self.view.size)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()  # the index frees its quantizer
        sample = min(n, self.ivf.train_per_list * nlist)
        rows = np.sort(np.random.default_rng(0).choice(n, sample, replace=False))
        index.cp.max_points_per_centroid = self.ivf.train_per_list
        index.train(self._layout.gallery(self.view, rows))
        index.nprobe = self.ivf.nprobe
        return index

    def _add_rows(self, index: faiss.Index, rows: np.ndarray) -> None:
        """Append the view's ``rows`` to ``index`` in bounded chunks (no full augmented copy)."""
        for part in row_blocks(rows.size, block_rows(self.dim, 4)):
            index.add(self._layout.gallery(self.view, rows[part]))

    def _derive(self, previous: FaissBackend) -> bool:
        """Build this index from ``previous``'s: clone it, tombstone what left, add what is new.
        Returns False (nothing done) when rebuilding is as cheap or necessary."""
        kept = self._kept_rows(previous)  # previous rows of this view's leading rows
        fresh = self.view.size - kept.size
        total = previous._index.ntotal + fresh
        if kept.size == 0 or total - self.view.size > REBUILD_DEAD_SHARE * total:
            return False
        self._layout = previous._layout
        index = faiss.clone_index(previous._index)
        self._add_rows(index, np.arange(kept.size, self.view.size))
        self._index = index
        kept_slots = previous._slots(kept)
        slots = np.concatenate([kept_slots, np.arange(previous._index.ntotal, total)])
        if total != self.view.size or not np.array_equal(slots, np.arange(total)):
            self._slot_of_row = slots
            self._row_of_slot = np.full(total, -1, np.int64)
            self._row_of_slot[slots] = np.arange(self.view.size)
            alive = self._row_of_slot >= 0
            self._bitmap = np.packbits(alive, bitorder="little")
            self._selector = faiss.IDSelectorBitmap(total, faiss.swig_ptr(self._bitmap))
        self.rebuilt = False
        return True

    def _share(self, previous: FaissBackend) -> None:
        """Serve ``previous``'s index (never written once built: a change derives a clone)."""
        self._layout, self._index = previous._layout, previous._index
        self._slot_of_row, self._row_of_slot = previous._slot_of_row, previous._row_of_slot
        self._selector, self._bitmap = previous._selector, previous._bitmap
        self.rebuilt = False

    def _kept_rows(self, previous: FaissBackend) -> np.ndarray:
        """Rows of ``previous`` that this view's first rows are, unchanged, in order.

        The engine keeps surviving rows in order and appends new and replaced items at the end,
        so the kept rows are the longest prefix of this view whose ids appear in ``previous``
        in increasing order and whose embeddings and stats are bitwise unchanged.
        """
        n_prev = previous.view.size
        if self.ids[:n_prev] == previous.ids:
            rows = np.arange(n_prev)
        else:
            where = previous._row_of_id
            rows = np.fromiter((where.get(i, -1) for i in self.ids), np.int64, len(self.ids))
            bad = (rows < 0) | np.concatenate([[False], np.diff(rows) <= 0])
            rows = rows[: int(np.argmax(bad)) if bad.any() else rows.size]
        same = _rows_equal(self.view, previous.view, rows)
        return rows[: int(np.argmin(same)) if not same.all() else rows.size]

    @cached_property
    def _row_of_id(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self.ids)}

    def _slots(self, rows: np.ndarray) -> np.ndarray:
        return rows if self._slot_of_row is None else self._slot_of_row[rows]

    # --- searching ------------------------------------------------------------------------

    def _search(
        self, coords: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(m, k) inner products and view rows (-1 where the index found fewer than k).
        ``allowed`` (n,) bool restricts the search to those view rows (an ID selector on their
        index slots, which also leaves out every tombstone)."""
        params: faiss.SearchParameters | None = None
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.hnsw.ef_search, k)
        elif self.kind == "ivf" and isinstance(self._index, faiss.IndexIVF):
            params = faiss.SearchParametersIVF()
            params.nprobe = self.ivf.nprobe
        selector, keep = self._selector, None
        if allowed is not None:
            slots = np.zeros(self._index.ntotal, bool)
            slots[self._slots(np.flatnonzero(allowed))] = True
            keep = np.packbits(slots, bitorder="little")  # alive while the search runs
            selector = faiss.IDSelectorBitmap(slots.size, faiss.swig_ptr(keep))
            params = params if params is not None else faiss.SearchParameters()
        if params is not None and selector is not None:
            params.sel = selector
        if params is None:
            dist, slots = self._index.search(coords, k)
        else:
            dist, slots = self._index.search(coords, k, params=params)
        del keep  # the search is over: the bitmap may go
        if self._row_of_slot is not None:
            slots = np.where(slots >= 0, self._row_of_slot[slots], -1)
        return dist, slots

    def _ranked(
        self, queries: np.ndarray, plan: QueryPlan, k: int, allowed: Mask, raw: RawTop1 | None
    ) -> Ranked:
        available = self.view.size if allowed is None else int(np.count_nonzero(allowed))
        m, k = queries.shape[0], min(k, available)
        if k == 0:
            return np.empty((m, 0), np.int64), np.empty((m, 0), np.float64)
        coords, shift = self._layout.queries(queries, plan)
        dist, rows = self._search(coords, k, allowed)
        scores = dist.astype(np.float64) + (plan.offsets + shift)[:, None]
        short = (rows < 0).any(axis=1)
        if short.any():  # an HNSW beam that found fewer than k rows: answer those exactly
            sub = QueryPlan(plan.weight, plan.coefficients[short], plan.offsets[short])
            rows[short], scores[short] = search(queries[short], self.view, sub, k, allowed=allowed)
        return rows.astype(np.int64, copy=False), scores

    def _raw_top1(self, queries: np.ndarray) -> RawTop1:
        m = queries.shape[0]
        raw = QueryPlan(1.0, np.zeros((m, _STATS)), np.zeros(m))
        coords = self._layout.queries(queries, raw)[0]
        rows = self._search(coords, 1, self.view.live_mask())[1][:, 0]
        short = rows < 0
        if short.any():
            rows[short] = top1_raw(queries[short], self.view.embeddings, self.view.live)
        return RawTop1(rows.astype(np.int64, copy=False))


def _same_rows(view: GalleryView, previous: FaissBackend) -> bool:
    """Whether ``view`` has the very arrays ``previous`` indexed (a change that only made rows
    dead, or none): an O(1) identity test, not a comparison."""
    before = previous.view
    return view.embeddings is before.embeddings and view.stats is before.stats


def _rows_equal(view: GalleryView, before: GalleryView, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) bool: row i of ``view`` equals row ``rows[i]`` of ``before`` (bitwise)."""
    same = np.empty(rows.size, bool)
    prefix = rows.size == 0 or (rows[0] == 0 and rows[-1] == rows.size - 1)
    for part in row_blocks(rows.size, block_rows(view.embeddings.shape[1], 4, 16 << 20)):
        old = part if prefix else rows[part]
        same[part] = (view.embeddings[part] == before.embeddings[old]).all(axis=1) & (
            view.stats[part] == before.stats[old]
        ).all(axis=1)
    return same
