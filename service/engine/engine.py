"""The engine: the served gallery state, searches on it, and atomic changes to it.

Searches read one immutable :class:`GalleryState` (a single reference read, no lock), so they
never block each other and never see a half-applied change; a search is one call into the
backend of the chosen view (:meth:`SearchBackend.search`). Changes are serialised by one
lock: the next state is built off to the side (touching only the rows a change affects, its
backends computing their differences without writing), written to the change log if there is
one, its backends committed (external writes, Milvus) before the log transaction commits, then
swapped in (durable before visible; a failure anywhere leaves the served state as it was). Changes
that arrive while one is being committed are committed together (group commit, see
:meth:`Engine.apply`): one log transaction and one swap for all of them.

Deletes and replacements leave the items' rows in place, dead (tombstones, O(batch)); once dead
rows exceed :attr:`Engine.dead_share` of the rows, a background thread drops them
(:meth:`Engine.compact_tombstones`, O(n·d), under the write lock from the latest state, so no
change is lost and searches go on with whole states).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from service.algorithms import (
    Banks,
    GalleryView,
    InputError,
    InvGCParams,
    NormParams,
    PreparedItems,
    adjusted_view,
    prepare_items,
)
from service.algorithms.blocks import work_dtype
from service.algorithms.hubs import HubScreening, Suspects, suspected_hubs
from service.algorithms.views import DEAD_SHARE
from service.backends import BackendFactory
from service.engine.changes import Change, Delete, Upsert
from service.engine.filters import Predicate, allowed_rows
from service.engine.items import item_stats, page_body
from service.engine.persistence import GalleryStore
from service.engine.state import Catalog, GalleryState, Metadata

if TYPE_CHECKING:
    from service.engine.live_bank import LiveQueryBank

log = logging.getLogger(__name__)

#: filter masks remembered (per gallery version and filter; n bytes each)
MASK_CACHE = 32


@dataclass(frozen=True)
class SearchResult:
    """Per query (best first): gallery ids, normalised scores, raw cosines to the original item."""

    version: int
    method: str
    invgc: bool
    ids: list[list[str]]
    scores: list[np.ndarray]
    similarities: list[np.ndarray]
    #: per query and hit, the item's metadata (only when the search asked for it)
    metadata: list[list[Metadata]] | None = None


@dataclass(frozen=True)
class HubWarning:
    """A new item whose query-bank k-occurrence has a robust z above the threshold."""

    id: str
    bank_occurrence: int
    z: float
    code: str = "suspected_hub"


class SuspectedHubError(InputError):
    """A change refused by the hub screening (``HUBLESS_HUB_POLICY=reject``); nothing changed."""

    def __init__(self, warnings: list[HubWarning]) -> None:
        shown = ", ".join(
            f"{w.id!r} (bank occurrence {w.bank_occurrence}, z {w.z:.1f})" for w in warnings[:10]
        )
        more = f" and {len(warnings) - 10} more" if len(warnings) > 10 else ""
        super().__init__(
            "items",
            f"suspected hub(s) refused: {shown}{more}; nothing was changed "
            "(HUBLESS_HUB_POLICY=reject, threshold HUBLESS_HUB_Z)",
        )
        self.warnings = warnings


@dataclass(frozen=True)
class ChangeResult:
    version: int
    size: int
    inserted: int
    updated: int
    deleted: int
    warnings: tuple[HubWarning, ...] = ()


@dataclass(eq=False)
class _Pending:
    """One caller's change waiting in the group-commit queue, and its outcome once ``done``."""

    change: Change
    done: bool = False
    result: ChangeResult | None = None
    error: BaseException | None = None


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
        screening: HubScreening | None = None,
        dead_share: float = DEAD_SHARE,
    ) -> None:
        """``screening``: needs a state whose original query-bank top-k is at least
        ``screening.k`` wide (``prepare_items(..., hub_topk=k)``). ``dead_share``: compact the
        rows once this share of them are dead."""
        if screening is not None and state.original.query_top.k < screening.k:
            width = state.original.query_top.k
            raise ValueError(f"hub screening at k={screening.k} needs a top-k state ≥ {width}")
        self._state = state
        self.banks = banks
        self.norm = norm
        self.invgc = invgc
        self.screening = screening
        self._backend = backend
        self._store: GalleryStore | None = None
        self._on_compact: Callable[[GalleryState], None] | None = None
        self._write_lock = threading.Lock()
        #: group commit: changes waiting for the next group, whether one is being committed,
        #: and the condition (its lock guards both) the waiting callers sleep on
        self._queue: list[_Pending] = []
        self._committing = False
        self._group = threading.Condition(threading.Lock())
        self._compacting = threading.Lock()  # held by the one compaction running
        self._dropping = threading.Lock()  # held by the one background drop of dead rows
        self.dead_share = dead_share
        #: deletes leave tombstones unless full-adjacency InvGC rebuilds every row anyway
        self._tombstones = invgc is None or invgc.adjacency == "local"
        self._masks: OrderedDict[tuple[int, int, str], np.ndarray] = OrderedDict()
        self._masks_lock = threading.Lock()
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
        screening: HubScreening | None = None,
        dead_share: float = DEAD_SHARE,
    ) -> Engine:
        """``version``: of this gallery (a snapshot continues the numbering of its changes)."""
        state = _whole_state(version, Catalog.create(ids, metadata), prepared, invgc, backend)
        return cls(state, banks, norm, invgc, backend, screening, dead_share)

    @property
    def state(self) -> GalleryState:
        return self._state

    @property
    def dim(self) -> int:
        return self.banks.dim

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def size(self) -> int:
        return self._state.size

    def page(self, offset: int, limit: int) -> dict:
        """A page of gallery ids and metadata, in gallery order, with the total count."""
        state = self._state
        end = min(state.size, offset + limit)
        ids, metadata = state.ids, state.metadata  # the live items in order (not by row)
        items = [{"id": ids[i], "metadata": metadata[i]} for i in range(offset, end)]
        return page_body(state.version, state.size, offset, limit, items)

    def item(self, item_id: str, embedding: bool = False) -> dict:
        """One item: metadata, its bank statistics on each view, optionally its embedding."""
        state = self._state
        row = int(state.rows_of([item_id], "id")[0])

        def stats(view: GalleryView) -> dict:
            return item_stats(view.stats[row], view.activated[row], view.bank_sizes)

        return {
            "id": item_id,
            "version": state.version,
            "metadata": state.catalog.metadata[row],  # by row: ``state.metadata`` skips dead rows
            "embedding": state.original.embeddings[row].tolist() if embedding else None,
            "stats": stats(state.original),
            "invgc_stats": stats(state.adjusted) if state.adjusted is not None else None,
        }

    def attach_store(
        self, store: GalleryStore, on_compact: Callable[[GalleryState], None] | None = None
    ) -> None:
        """From now on, every change is written to ``store`` before it becomes visible.
        ``on_compact(state)`` runs after each snapshot (startup caches its precompute)."""
        self._store = store
        self._on_compact = on_compact

    def compact(self) -> int:
        """Snapshot the current gallery into the store and drop the changes it includes;
        returns the version. One compaction at a time."""
        if self._store is None:
            raise RuntimeError("this engine has no durable store")
        with self._compacting:
            return self._snapshot()

    def _snapshot(self) -> int:
        """:meth:`compact`, ``_compacting`` held. Only reading the state and the log position
        it is at holds the write lock: a snapshot of 100k items (rows encoded and checksummed,
        the precompute cache saved) takes seconds, during which changes go on, waiting only for
        the store's transaction (the changes logged meanwhile stay in the log)."""
        assert self._store is not None
        with self._write_lock:  # the state (dead rows dropped) and its log position, as of the
            state, seq, banks = self._drop_dead(), self._store.seq, self.banks  # same change
        self._store.snapshot(state.ids, state.metadata, state.original.embeddings, seq)
        # the cache entry holds the banks' DBSN weights: skipped if a new query bank came in
        if self._on_compact is not None and self.banks is banks:
            self._on_compact(state)
        return state.version

    def _compact_in_background(self) -> None:
        """Past the store's thresholds: snapshot off the request path (one at a time)."""
        if not self._compacting.acquire(blocking=False):
            return

        def run() -> None:
            try:
                self._snapshot()
            except Exception:  # the log keeps every change; the next threshold retries
                log.exception("automatic compaction failed")
                return
            finally:
                self._compacting.release()
            # changes logged during the snapshot stay in the log, and their own triggers found
            # this compaction running: if they crossed a threshold again, compact again
            if self._store is not None and self._store.due_for_compaction:
                self._compact_in_background()

        threading.Thread(target=run, name="compaction", daemon=True).start()

    def compact_tombstones(self) -> GalleryState:
        """Drop the dead rows (tombstones) of the current state and serve the result: the state
        a fresh start on the live items builds, same version. O(n·d) under the write lock
        (changes wait; searches go on with the previous state). Returns the state served."""
        with self._write_lock:
            return self._drop_dead()

    def _drop_dead(self) -> GalleryState:
        """:meth:`compact_tombstones`, the write lock held."""
        state = self._state
        if not state.dead:
            return state
        started = time.perf_counter()
        dense = GalleryState.create(
            state.version,
            state.catalog.keep(np.ones(len(state.catalog.ids), dtype=bool)),
            state.original.compacted(self.banks),
            None if state.adjusted is None else state.adjusted.compacted(self.banks),
            self._backend,
            state,
            state.gallery_sum,
        )
        self._state = dense
        log.info(
            "dead rows dropped",
            extra={
                "version": dense.version,
                "size": dense.size,
                "dead": state.dead,
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        return dense

    def _after_swap(self, state: GalleryState) -> None:
        """Start the background work a new state is due for: the store's snapshot, or the drop
        of dead rows once they exceed ``dead_share`` of the rows (one thread at a time)."""
        if self._store is not None and self._store.due_for_compaction:
            self._compact_in_background()
        if state.dead <= self.dead_share * len(state.catalog.ids):
            return
        if not self._dropping.acquire(blocking=False):
            return

        def run() -> None:
            try:
                self.compact_tombstones()
            except Exception:  # the state keeps its dead rows; the next change retries
                log.exception("dropping dead rows failed")
            finally:
                self._dropping.release()

        threading.Thread(target=run, name="drop-dead-rows", daemon=True).start()

    def replace_query_bank(
        self, query_bank: np.ndarray, *, commit: Callable[[], None] | None = None
    ) -> None:
        """Serve with a new query bank (n_q, d), normalised: every statistic, activation set
        and the InvGC view recomputed for the current gallery exactly as a fresh start with that
        bank computes them (O(n·N·d)), then banks and state swapped together.

        Holds the write lock throughout, so gallery changes wait and none is lost; searches go
        on with the previous state. ``commit`` runs after the computation and the backends'
        commit, before the swap (the live bank writes its rows durably there); if anything
        fails, nothing changes (an external index ahead of it is repaired by the next commit).
        """
        with self._write_lock:
            started = time.perf_counter()
            state = self._drop_dead()  # the new bank's precompute is over the live rows only
            banks = Banks(query_bank, self.banks.gallery_bank)
            prepared = prepare_items(
                state.original.embeddings,
                banks,
                self.norm,
                self.invgc,
                hub_topk=state.original.query_top.k,
            )
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

    def search(
        self,
        queries: np.ndarray | None,
        *,
        k: int,
        method: str,
        invgc: bool,
        offset: int = 0,
        score_threshold: float | None = None,
        where: Predicate | None = None,
        with_metadata: bool = False,
        query_ids: Sequence[str] | None = None,
        where_key: str | None = None,
    ) -> SearchResult:
        """Top ``offset+1 … offset+k`` of each normalised query (m, d) by ``method``.

        ``query_ids`` instead of ``queries``: search with those items' stored (original)
        embeddings ("more like this"; each item is normally its own first hit). ``where``: a
        metadata filter; the result is the full ranking restricted to the items it passes. The
        dynamic methods' raw top-1 pass stays over the whole gallery: the activation is a
        property of the query, not of the filter, so a filter never changes an item's score.
        ``where_key`` names the filter (its canonical JSON): the rows it passes are then
        remembered for this gallery version (matching is a Python pass over the metadata).
        """
        state = self._state  # one snapshot for the whole search
        if queries is None:
            stored = state.original.embeddings[state.rows_of(list(query_ids or ()), "query_ids")]
            queries = stored.astype(work_dtype(stored.dtype), copy=False)  # float16 storage
        allowed = None if where is None else self._allowed(state, where, where_key)
        hits = state.backend(invgc).search(queries, method, self.norm, k + offset, allowed)
        rows, scores = hits.rows[:, offset:], hits.scores[:, offset:]
        sims = np.einsum("md,mkd->mk", queries, state.original.embeddings[rows]).astype(np.float64)
        ids_of = state.id_array  # by row, as ``meta`` below (dead rows are never found)
        keep = None if score_threshold is None else scores >= score_threshold
        if keep is not None:
            rows = [r[f] for r, f in zip(rows, keep, strict=True)]  # type: ignore[assignment]
            scores = [s[f] for s, f in zip(scores, keep, strict=True)]  # type: ignore[assignment]
            sims = [c[f] for c, f in zip(sims, keep, strict=True)]  # type: ignore[assignment]
        metadata = None
        if with_metadata:
            meta = state.catalog.metadata
            metadata = [[meta[r] for r in row.tolist()] for row in rows]
        # without a threshold one vectorised lookup; with one, a lookup per query
        ids = ids_of[rows].tolist() if keep is None else [ids_of[r].tolist() for r in rows]
        return SearchResult(state.version, method, invgc, ids, list(scores), list(sims), metadata)

    def _allowed(self, state: GalleryState, where: Predicate, key: str | None) -> np.ndarray:
        """The rows of ``state`` that pass ``where`` (dead rows included: the back ends leave
        them out); cached per (version, row count, key), a few (dropping dead rows keeps the
        version but changes the row count)."""
        metadata = state.catalog.metadata
        if key is None:
            return allowed_rows(metadata, where)
        cache_key = (state.version, len(metadata), key)
        with self._masks_lock:
            mask = self._masks.get(cache_key)
        if mask is None:
            mask = allowed_rows(metadata, where)
            with self._masks_lock:
                self._masks[cache_key] = mask
                while len(self._masks) > MASK_CACHE:
                    self._masks.popitem(last=False)
        return mask

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

        ``record=False`` replays a change that is already in the log (not screened again).
        Order: validate, build the next state off to the side, screen it for hubs (a refusal
        leaves everything as it was), log it, swap it in.

        Group commit: changes that arrive while another group is being committed queue up; when
        it is done, the first of them to wake up applies the whole queue in arrival order (each
        change validated and screened on its own: one that fails fails alone), commits the
        accepted ones in one store transaction and swaps one state. Every caller returns only
        once its own change is durable (or raises its own error; if the commit fails, every
        caller of the group gets that error and nothing changed).
        """
        if not record:
            with self._write_lock:
                state, result = self._next_state(self._state, change)
                self._state = state
            self._after_swap(state)
            return result
        pending = _Pending(change)
        with self._group:
            self._queue.append(pending)
            while self._committing and not pending.done:
                self._group.wait()  # a group is being committed: this change joins the next
            if not pending.done:  # no commit running: this caller commits the queue
                group, self._queue, self._committing = self._queue, [], True
        if not pending.done:
            try:
                with self._write_lock:
                    self._commit_group(group)
            finally:
                with self._group:
                    for waiting in group:
                        waiting.done = True
                    self._committing = False
                    self._group.notify_all()
        if pending.error is not None:
            raise pending.error
        if pending.result is None:  # the committing thread was interrupted before deciding
            raise RuntimeError("the change was not applied")
        return pending.result

    def _commit_group(self, group: list[_Pending]) -> None:
        """Apply, log (one transaction, inside which the backends commit) and swap ``group``;
        fill in each one's outcome. Runs under the write lock. The states between the changes of
        a group are never searched, so only the last one gets search back ends (derived from the
        served one)."""
        started = time.perf_counter()
        current = state = self._state
        accepted: list[_Pending] = []
        try:
            for run in self._runs(group, state):
                state = self._apply_run(state, run)
                accepted += [p for p in run if p.error is None]
            if not accepted:
                return
            state = GalleryState.create(
                state.version,
                state.catalog,
                state.original,
                state.adjusted,
                self._backend,
                current,
                state.gallery_sum,
            )
            if self._store is not None:
                self._store.append_many([p.change for p in accepted])
        except Exception as exc:  # back ends or the commit failed: the whole group with it
            for pending in accepted:
                pending.result, pending.error = None, exc
            return
        self._state = state
        self._after_swap(state)
        results = [p.result for p in accepted if p.result is not None]
        log.info(
            "gallery changed",
            extra={
                "version": state.version,
                "size": state.size,
                "changes": len(results),
                "inserted": sum(r.inserted for r in results),
                "updated": sum(r.updated for r in results),
                "deleted": sum(r.deleted for r in results),
                "seconds": round(time.perf_counter() - started, 4),
            },
        )

    def _runs(self, group: list[_Pending], state: GalleryState) -> Iterator[list[_Pending]]:
        """``group`` cut into runs applied as one: consecutive upserts of ids new to the gallery
        and to the run (appending them together equals appending them one by one, and costs one
        bank scan), or single changes. With ``HUBLESS_HUB_POLICY=reject`` every change runs
        alone (a refusal must leave the others' state exactly as without it)."""
        merge = self.screening is None or not self.screening.reject
        run: list[_Pending] = []
        touched: set[str] = set()  # ids of the group's earlier changes (the state moves on)
        for pending in group:
            change = pending.change
            fresh = (
                merge
                and isinstance(change, Upsert)
                and not any(i in touched or i in state.rows for i in change.ids)
            )
            touched.update(change.ids)
            if run and not fresh:
                yield run
                run = []
            if fresh:
                run.append(pending)
            else:
                yield [pending]
        if run:
            yield run

    def _apply_run(self, state: GalleryState, run: list[_Pending]) -> GalleryState:
        """The state after ``run`` (see :meth:`_runs`), each change's outcome filled in; a
        change that fails fails alone."""
        if len(run) > 1:
            changes = [p.change for p in run if isinstance(p.change, Upsert)]
            merged = Upsert(
                tuple(i for c in changes for i in c.ids),
                np.concatenate([c.embeddings for c in changes]),
                tuple(m for c in changes for m in c.metadata),
            )
            try:
                after, _ = self._next_state(state, merged, with_backends=False)
            except Exception:  # find which change fails: one by one
                return self._apply_each(state, run)
            after = replace(after, version=state.version + len(run))  # one version per change
            first = state.row_count  # the run's rows: after the state's last row
            found = self._suspects(after, np.arange(first, after.row_count))  # once per run
            for pending, change in zip(run, changes, strict=True):
                result = ChangeResult(after.version, after.size, len(change.ids), 0, 0)
                pending.result = self._screen(after, change, result, first, found)
                first += len(change.ids)
            return after
        return self._apply_each(state, run)

    def _apply_each(self, state: GalleryState, run: list[_Pending]) -> GalleryState:
        """Apply the changes of ``run`` one after the other; one that fails fails alone."""
        for pending in run:
            try:
                after, result = self._next_state(state, pending.change, with_backends=False)
                if isinstance(pending.change, Upsert):
                    result = self._screen(after, pending.change, result)
            except Exception as exc:  # this change alone is refused
                pending.error = exc
                continue
            state, pending.result = after, result
        return state

    def _next_state(
        self, state: GalleryState, change: Change, *, with_backends: bool = True
    ) -> tuple[GalleryState, ChangeResult]:
        """The state after ``change``: O(batch) (appends, per-item stats and InvGC of the batch
        alone; the rows of deleted and replaced items left dead), or one O(n·d) copy when rows
        go and tombstones are off (full-adjacency InvGC).
        ``with_backends=False``: a state without search back ends (inside a group commit)."""
        rows = state.rows
        replaced = [i for i in change.ids if i in rows]
        if isinstance(change, Delete):
            state.rows_of(list(change.ids))  # every id must exist
        catalog, original, adjusted = state.catalog, state.original, state.adjusted
        gallery_sum = state.gallery_sum
        if replaced:
            gone = state.rows_of(replaced)
            if gallery_sum is not None:
                gallery_sum = gallery_sum - original.embeddings[gone].sum(axis=0, dtype=np.float64)
            if self._tombstones:
                catalog = catalog.tombstone(gone)
                assert catalog.live is not None
                original = original.tombstone(catalog.live, self.banks)
                if adjusted is not None and self._per_item_invgc:
                    adjusted = adjusted.tombstone(catalog.live, self.banks)
            else:
                keep = np.ones(state.row_count, dtype=bool)
                keep[gone] = False
                catalog = catalog.keep(keep)
                original = original.remove(keep, self.banks)
                if adjusted is not None and self._per_item_invgc:
                    adjusted = adjusted.remove(keep, self.banks)
        inserted = 0
        if isinstance(change, Upsert):
            invgc = self.invgc if self._per_item_invgc else None
            width = original.query_top.k  # the batch's top-k as wide as the state it joins
            # rounded to the gallery's dtype first: the batch's stats are those of the rows
            # stored, exactly as a fresh start on the same rows computes them
            items = change.embeddings.astype(original.embeddings.dtype, copy=False)
            batch = prepare_items(items, self.banks, self.norm, invgc, hub_topk=width)
            original = original.append(batch.original, self.banks)
            if batch.adjusted is not None and adjusted is not None:
                adjusted = adjusted.append(batch.adjusted, self.banks)
            if gallery_sum is not None:
                gallery_sum = gallery_sum + items.sum(axis=0, dtype=np.float64)
            catalog = catalog.append(change.ids, change.metadata)
            inserted = len(change.ids) - len(replaced)
        if gallery_sum is not None:
            adjusted = self._rebuild_adjusted(original, gallery_sum)
        if with_backends:
            next_state = GalleryState.create(
                state.version + 1, catalog, original, adjusted, self._backend, state, gallery_sum
            )
        else:
            next_state = GalleryState(
                state.version + 1, catalog, original, adjusted, {}, gallery_sum
            )
        deleted = len(change.ids) if isinstance(change, Delete) else 0
        updated = len(replaced) if isinstance(change, Upsert) else 0
        return next_state, ChangeResult(
            next_state.version, next_state.size, inserted, updated, deleted
        )

    def _suspects(self, state: GalleryState, rows: np.ndarray) -> Suspects | None:
        """Which of ``rows`` of ``state`` are suspected hubs: their query-bank k-occurrence
        is an outlier among all gallery items' (robust z, zeros included); O(|BQ|·k + n)."""
        if self.screening is None:
            return None
        view = state.original
        occurrence = view.query_top.occurrence(view.size, self.screening.k)
        return suspected_hubs(occurrence, rows, self.screening.z, view.live)

    def _screen(
        self,
        state: GalleryState,
        change: Upsert,
        result: ChangeResult,
        first: int | None = None,
        found: Suspects | None = None,
    ) -> ChangeResult:
        """Warn about (or refuse) the change's items that are suspected hubs after the change.

        The upserted items are the rows from ``first`` of the state already built (by default
        its last rows); ``found``: the suspects of a merged run of a group commit, screened
        once for the whole run (the run's rows against the state after it).
        """
        if self.screening is None:
            return result
        if first is None:
            first = state.row_count - len(change.ids)
        if found is None:
            found = self._suspects(state, np.arange(first, first + len(change.ids)))
            assert found is not None
        mine = (found.rows >= first) & (found.rows < first + len(change.ids))
        found = Suspects(found.rows[mine], found.occurrence[mine], found.z[mine])
        warnings = tuple(
            HubWarning(change.ids[row - first], int(count), float(z))
            for row, count, z in zip(found.rows, found.occurrence, found.z, strict=True)
        )
        if warnings and self.screening.reject:
            raise SuspectedHubError(list(warnings))
        if warnings:
            log.warning(
                "suspected hub upserted",
                extra={"ids": [w.id for w in warnings][:10], "max_z": float(found.z.max())},
            )
        return replace(result, warnings=warnings)

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
