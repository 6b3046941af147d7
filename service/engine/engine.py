"""The engine: the served gallery state, searches on it, and atomic changes to it.

Searches read one immutable :class:`GalleryState` (a single reference read, no lock), so they
never block each other and never see a half-applied change. Changes are serialised by one
lock: the next state is built off to the side (touching only the rows a change affects),
written to the change log if there is one (durable before visible), then swapped in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.algorithms import (
    Banks,
    GalleryView,
    InputError,
    InvGCParams,
    NormParams,
    PreparedItems,
    QueryPlan,
    adjusted_view,
    get_normaliser,
    prepare_items,
)
from service.backends import BackendFactory, SearchBackend
from service.engine.changes import Change, Delete, Upsert
from service.engine.persistence import GalleryStore
from service.engine.state import Catalog, GalleryState, Metadata

if TYPE_CHECKING:
    from service.engine.live_bank import LiveQueryBank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """Per query (best first): gallery ids, normalised scores, raw cosines to the original item."""

    version: int
    method: str
    invgc: bool
    ids: list[list[str]]
    scores: list[np.ndarray]
    similarities: list[np.ndarray]


@dataclass(frozen=True)
class ChangeResult:
    version: int
    size: int
    inserted: int
    updated: int
    deleted: int


def _whole_state(
    version: int,
    catalog: Catalog,
    prepared: PreparedItems,
    invgc: InvGCParams | None,
    backend: BackendFactory,
    previous: GalleryState | None = None,
) -> GalleryState:
    """The state of a whole gallery prepared at once (at startup, or for new banks)."""
    full = invgc is not None and invgc.adjacency == "full"
    gallery_sum = prepared.original.embeddings.sum(axis=0, dtype=np.float64) if full else None
    return GalleryState.create(
        version, catalog, prepared.original, prepared.adjusted, backend, previous, gallery_sum
    )


class Engine:
    """Owns the current :class:`GalleryState`, the banks and the parameters (the query bank
    changes only with a live query bank, through :meth:`replace_query_bank`)."""

    def __init__(
        self,
        state: GalleryState,
        banks: Banks,
        norm: NormParams,
        invgc: InvGCParams | None,
        backend: BackendFactory,
    ) -> None:
        self._state = state
        self.banks = banks
        self.norm = norm
        self.invgc = invgc
        self._backend = backend
        self._store: GalleryStore | None = None
        self._write_lock = threading.Lock()
        #: the live query bank feeding this engine's query bank, if HUBLESS_LIVE_QUERY_BANK
        self.live_bank: LiveQueryBank | None = None

    @classmethod
    def from_prepared(
        cls,
        ids: tuple[str, ...],
        metadata: tuple[Metadata, ...],
        prepared: PreparedItems,
        banks: Banks,
        norm: NormParams,
        invgc: InvGCParams | None,
        backend: BackendFactory,
        *,
        version: int = 1,
    ) -> Engine:
        """``version``: of this gallery (a snapshot continues the numbering of its changes)."""
        state = _whole_state(version, Catalog.create(ids, metadata), prepared, invgc, backend)
        return cls(state, banks, norm, invgc, backend)

    @property
    def state(self) -> GalleryState:
        return self._state

    @property
    def dim(self) -> int:
        return self.banks.dim

    def attach_store(self, store: GalleryStore) -> None:
        """From now on, every change is written to ``store`` before it becomes visible."""
        self._store = store

    def compact(self) -> int:
        """Snapshot the current gallery into the store and empty its log; returns the version."""
        if self._store is None:
            raise RuntimeError("this engine has no durable store")
        with self._write_lock:
            state = self._state
            self._store.snapshot(state.ids, state.metadata, state.original.embeddings)
            return state.version

    def replace_query_bank(
        self, query_bank: np.ndarray, *, commit: Callable[[], None] | None = None
    ) -> None:
        """Serve with a new query bank (n_q, d), normalised: every statistic, activation set
        and the InvGC view recomputed for the current gallery exactly as a fresh start with that
        bank computes them (O(n·N·d)), then banks and state swapped together.

        Holds the write lock throughout, so gallery changes wait and none is lost; searches go
        on with the previous state. ``commit`` runs after the computation and before the swap
        (the live bank writes its rows durably there); if anything fails, nothing changes.
        """
        with self._write_lock:
            started = time.perf_counter()
            state = self._state
            banks = Banks(query_bank, self.banks.gallery_bank)
            prepared = prepare_items(state.original.embeddings, banks, self.norm, self.invgc)
            next_state = _whole_state(
                state.version, state.catalog, prepared, self.invgc, self._backend, state
            )
            if commit is not None:
                commit()
            self.banks, self._state = banks, next_state
            log.info(
                "query bank replaced",
                extra={
                    "query_bank": banks.sizes[0],
                    "gallery": next_state.size,
                    "seconds": round(time.perf_counter() - started, 4),
                },
            )

    # --- searching ------------------------------------------------------------------------

    def plan(
        self, state: GalleryState, queries: np.ndarray, method: str, invgc: bool
    ) -> tuple[SearchBackend, QueryPlan]:
        """The backend of the chosen view and the query plan of ``method`` for ``queries``
        (running the raw top-1 pass first for the dynamic methods)."""
        normaliser = get_normaliser(method)
        view, backend = state.view(invgc), state.backend(invgc)
        activated = None
        if normaliser.dynamic:  # an empty gallery has no top-1: nothing is activated
            activated = (
                view.activated[backend.top1(queries)]
                if view.size
                else np.zeros((queries.shape[0], 2), dtype=bool)
            )
        return backend, normaliser.plan(self.norm, view.bank_sizes, queries.shape[0], activated)

    def search(
        self,
        queries: np.ndarray,
        *,
        k: int,
        method: str,
        invgc: bool,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> SearchResult:
        """Top ``offset+1 … offset+k`` of each normalised query (m, d) by ``method``."""
        state = self._state  # one snapshot for the whole search
        backend, plan = self.plan(state, queries, method, invgc)
        rows, scores = backend.search(queries, plan, k + offset)
        rows, scores = rows[:, offset:], scores[:, offset:]
        sims = np.einsum("md,mkd->mk", queries, state.original.embeddings[rows]).astype(np.float64)
        ids_of = state.id_array
        if score_threshold is None:  # one vectorised lookup; the loops below are per query
            return SearchResult(
                state.version, method, invgc, ids_of[rows].tolist(), list(scores), list(sims)
            )
        keep = scores >= score_threshold
        return SearchResult(
            version=state.version,
            method=method,
            invgc=invgc,
            ids=[ids_of[r[k]].tolist() for r, k in zip(rows, keep, strict=True)],
            scores=[s[k] for s, k in zip(scores, keep, strict=True)],
            similarities=[c[k] for c, k in zip(sims, keep, strict=True)],
        )

    # --- changing -------------------------------------------------------------------------

    def upsert(
        self, ids: list[str], embeddings: np.ndarray, metadata: list[Metadata]
    ) -> ChangeResult:
        """Insert or replace items; embeddings (b, d) already validated and normalised."""
        dupes = [i for i, count in Counter(ids).items() if count > 1]
        if dupes:
            raise InputError("items", f"duplicate ids in one batch: {dupes[:10]}")
        change = Upsert(tuple(ids), embeddings.astype(np.float32, copy=False), tuple(metadata))
        return self.apply(change)

    def delete(self, ids: list[str]) -> ChangeResult:
        """Remove items by id; every id must exist (or nothing is removed)."""
        return self.apply(Delete(tuple(dict.fromkeys(ids))))

    def apply(self, change: Change, *, record: bool = True) -> ChangeResult:
        """Build the next state with ``change`` and swap it in (atomically, durably).

        ``record=False`` replays a change that is already in the log.
        """
        with self._write_lock:
            started = time.perf_counter()
            current = self._state
            state, result = self._next_state(current, change)
            if record and self._store is not None:
                self._store.append(change)
            self._state = state
            log.info(
                "gallery changed",
                extra={
                    "version": state.version,
                    "size": state.size,
                    "inserted": result.inserted,
                    "updated": result.updated,
                    "deleted": result.deleted,
                    "seconds": round(time.perf_counter() - started, 4),
                },
            )
            return result

    def _next_state(self, state: GalleryState, change: Change) -> tuple[GalleryState, ChangeResult]:
        """The state after ``change``: O(batch) for new ids (appends, per-item stats and InvGC of
        the batch alone), plus one O(n·d) compaction when rows go (deletes and replacements)."""
        rows = state.rows
        replaced = [i for i in change.ids if i in rows]
        if isinstance(change, Delete):
            state.rows_of(list(change.ids))  # every id must exist
        catalog, original, adjusted = state.catalog, state.original, state.adjusted
        gallery_sum = state.gallery_sum
        if replaced:
            keep = np.ones(state.size, dtype=bool)
            keep[state.rows_of(replaced)] = False
            if gallery_sum is not None:
                gallery_sum = gallery_sum - original.embeddings[~keep].sum(axis=0, dtype=np.float64)
            catalog = catalog.keep(keep)
            original = original.remove(keep, self.banks)
            if adjusted is not None and self._per_item_invgc:
                adjusted = adjusted.remove(keep, self.banks)
        inserted = 0
        if isinstance(change, Upsert):
            invgc = self.invgc if self._per_item_invgc else None
            batch = prepare_items(change.embeddings, self.banks, self.norm, invgc)
            original = original.append(batch.original, self.banks)
            if batch.adjusted is not None and adjusted is not None:
                adjusted = adjusted.append(batch.adjusted, self.banks)
            if gallery_sum is not None:
                gallery_sum = gallery_sum + change.embeddings.sum(axis=0, dtype=np.float64)
            catalog = catalog.append(change.ids, change.metadata)
            inserted = len(change.ids) - len(replaced)
        if gallery_sum is not None:
            adjusted = self._rebuild_adjusted(original, gallery_sum)
        next_state = GalleryState.create(
            state.version + 1, catalog, original, adjusted, self._backend, state, gallery_sum
        )
        deleted = len(change.ids) if isinstance(change, Delete) else 0
        updated = len(replaced) if isinstance(change, Upsert) else 0
        return next_state, ChangeResult(
            next_state.version, next_state.size, inserted, updated, deleted
        )

    @property
    def _per_item_invgc(self) -> bool:
        """LocalAdj items are independent; full adjacency couples them through the mean."""
        return self.invgc is not None and self.invgc.adjacency == "local"

    def _rebuild_adjusted(self, original: GalleryView, gallery_sum: np.ndarray) -> GalleryView:
        """Full adjacency: the gallery mean (kept as a running sum) changed, so every adjusted
        item and its stats do (O(n·N·d): the cost of a change here, by design of the method)."""
        assert self.invgc is not None
        mean = gallery_sum / max(1, original.size)
        return adjusted_view(
            original.embeddings, self.banks, self.norm, self.invgc, gallery_mean=mean
        )
