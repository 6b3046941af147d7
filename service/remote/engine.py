"""RemoteEngine: the engine of ``HUBLESS_BACKEND=milvus``, with Milvus as the system of record.

The process holds only bank-sized state: the banks (and DBSN's v, solved from them at start, as
the writer does), the parameters and, per view and bank, each bank item's top-k gallery ids
(:class:`~service.remote.banktop.IdTopK`: the activation sets and hub screening derive from it).
Every gallery row lives in Milvus (:mod:`service.remote.store`).

A search: plan with the normaliser (the dynamic methods' raw top-1 is a Milvus search with
``[q, 0…]``, its id looked up in the activation sets), then one Milvus search with
``[w·q, c(q)]`` restricted to ``seq <= V`` (the version served); scores are the inner products
plus the plan's offsets, ``similarity`` the cosine to the item's original row (read back).

A change (writer only, under one lock): validate, compute the batch's rows and the new bank
state off to the side (the batch's stats and bank top-k from the banks alone; bank items whose
top-k held a removed id rescanned with a Milvus search that excludes the removed ids), screen
for hubs, then write: intent → rows (original view first) → changed bank-state rows → version →
intent removed. Only then is it acknowledged. A crash (or a Milvus error) in between leaves an
intent whose version is newer than the committed one: :meth:`RemoteEngine.recover` finishes it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.algorithms import (
    Banks,
    InputError,
    InvGCParams,
    NormParams,
    plan_for,
    prepare_items,
)
from service.algorithms.augment import plan_coordinates, raw_coordinates
from service.algorithms.hubs import HubScreening
from service.backends.base import BackendUnavailable
from service.engine.engine import ChangeResult, HubWarning, SearchResult, SuspectedHubError
from service.engine.filters import Predicate
from service.engine.items import item_stats, page_body
from service.engine.state import Metadata, UnknownIdError
from service.remote.banktop import IdTopK, robust_scale
from service.remote.filters import milvus_filter
from service.remote.store import (
    BANK_CHUNK,
    GALLERY,
    ID,
    INTENT_CHUNK,
    INVGC,
    KEY,
    METADATA,
    ORIGINAL,
    QUERY,
    SEQ,
    VALUE,
    VECTOR,
    RemoteStore,
    both,
    id_filter,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (view, bank)
#: Rows prepared at once when the writer loads a gallery file into an empty collection.
LOAD_CHUNK = 4096


@dataclass(frozen=True)
class Served:
    """What a process serves: the committed version, the gallery size and the bank state."""

    version: int
    size: int
    tops: dict[Key, IdTopK] = field(repr=False)

    def activation(self, view: str, top1: Sequence[str | None]) -> np.ndarray:
        """(m, 2) bool: each raw top-1 id in (A_BQ, A_BG) of ``view``."""
        query, gallery = self.tops[(view, QUERY)].activated, self.tops[(view, GALLERY)].activated
        flags = [(i in query, i in gallery) if i is not None else (False, False) for i in top1]
        return np.array(flags, dtype=bool).reshape(len(top1), 2)


@dataclass(frozen=True)
class ServedView:
    """One view of what a process serves, as the planner sees a gallery
    (:class:`~service.algorithms.planning.Plannable`): its items are named by id."""

    served: Served
    view: str
    bank_sizes: tuple[int, int]

    @property
    def live_size(self) -> int:
        return self.served.size

    def activation(self, top1: Sequence[str | None]) -> np.ndarray:
        return self.served.activation(self.view, top1)


def bank_widths(views: Sequence[str], norm: NormParams, hub_k: int) -> dict[Key, int]:
    """Top-k width per (view, bank): the original view's query-bank state also serves hub
    screening (k = max(dis_topk, hub_k)); the others only the activation sets."""
    out = {}
    for view in views:
        out[(view, QUERY)] = max(norm.dis_topk, hub_k) if view == ORIGINAL else norm.dis_topk
        out[(view, GALLERY)] = norm.dis_topk
    return out


class RemoteEngine:
    """The engine API the routes use (search, upsert, delete, page, item, version, size) on a
    :class:`RemoteStore`. ``read_only``: a reader (follows the writer, refuses changes)."""

    live_bank = None  # the live query bank is refused with the milvus backend (settings)

    def __init__(
        self,
        store: RemoteStore,
        banks: Banks,
        norm: NormParams,
        invgc: InvGCParams | None,
        screening: HubScreening | None,
        *,
        read_only: bool,
    ) -> None:
        if invgc is not None and invgc.adjacency != "local":
            raise ValueError("the milvus backend serves LocalAdj InvGC only")
        self.store, self.banks, self.norm, self.invgc = store, banks, norm, invgc
        self.screening, self.read_only = screening, read_only
        self.views = (ORIGINAL, INVGC) if invgc is not None else (ORIGINAL,)
        self._served = Served(0, 0, self._empty_tops())
        self._lock = threading.Lock()  # one change (or recovery) at a time
        self._dirty = False  # a change failed part-way: recover before the next one
        #: the writer's lease (set by the startup); changes check it is still held
        self.lease: Any = None
        self.follower: Any = None

    # --- the routes' view of the engine ----------------------------------------------------

    @property
    def dim(self) -> int:
        return self.banks.dim

    @property
    def served(self) -> Served:
        """The version served now, its size and bank state (one consistent snapshot)."""
        return self._served

    @property
    def version(self) -> int:
        return self._served.version

    @property
    def size(self) -> int:
        return self._served.size

    def widths(self) -> dict[Key, int]:
        return bank_widths(self.views, self.norm, self.screening.k if self.screening else 0)

    def _empty_tops(self) -> dict[Key, IdTopK]:
        n = {QUERY: self.banks.sizes[0], GALLERY: self.banks.sizes[1]}
        return {
            key: IdTopK.empty(n[key[1]], k, self.norm.dis_topk) for key, k in self.widths().items()
        }

    def _bank(self, bank: str) -> np.ndarray:
        return self.banks.query_bank if bank == QUERY else self.banks.gallery_bank

    def page(self, offset: int, limit: int) -> dict:
        """A page of ids and metadata (in Milvus's order, the same for every process)."""
        served = self._served
        rows = self.store.query(
            ORIGINAL, f"{SEQ} <= {served.version}", [METADATA], offset=offset, limit=limit
        )
        items = [{"id": r[ID], "metadata": r[METADATA]["v"]} for r in rows]
        return page_body(served.version, served.size, offset, limit, items)

    def item(self, item_id: str, embedding: bool = False) -> dict:
        """One item: metadata, bank statistics on each view, optionally its embedding."""
        served = self._served
        expr = f"{SEQ} <= {served.version}"
        found = {v: self.store.get_rows(v, [item_id], [VECTOR, METADATA], expr) for v in self.views}
        row = found[ORIGINAL].get(item_id)
        if row is None:
            raise UnknownIdError("id", [item_id])
        d = self.dim

        def stats(view: str) -> dict | None:
            stored = found[view].get(item_id)
            if stored is None:
                return None
            flags = served.activation(view, [item_id])[0]
            return item_stats(np.asarray(stored[VECTOR][d:]), flags, self.banks.sizes)

        vector = np.asarray(row[VECTOR], dtype=np.float32)
        return {
            "id": item_id,
            "version": served.version,
            "metadata": row[METADATA]["v"],
            "embedding": vector[:d].tolist() if embedding else None,
            "stats": stats(ORIGINAL),
            "invgc_stats": stats(INVGC) if self.invgc is not None else None,
        }

    def compact(self) -> int:
        """Milvus is the store: nothing to compact (``POST /admin/snapshot`` answers the
        version)."""
        return self.version

    def close(self) -> None:
        """Stop following / release the lease (at shutdown)."""
        if self.follower is not None:
            self.follower.stop()
        if self.lease is not None:
            self.lease.release()

    # --- searching -------------------------------------------------------------------------

    def _view(self, invgc: bool) -> str:
        if invgc and self.invgc is None:
            raise InputError("invgc", "InvGC is not enabled on this service (HUBLESS_INVGC)")
        return INVGC if invgc else ORIGINAL

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
        """As :meth:`service.engine.Engine.search`, on Milvus (``where_key``, the filter's
        canonical JSON, is translated to a Milvus expression; ``where`` is not used)."""
        if where is not None and where_key is None:
            raise InputError("filter", "a filter needs its JSON form with the milvus backend")
        served = self._served  # one version for the whole search
        view = self._view(invgc)
        if queries is None:
            queries = self._stored_queries(list(query_ids or ()), served)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        visible = f"{SEQ} <= {served.version}"

        def raw_top1() -> list[str | None]:  # over the whole gallery: a filter never gates it
            found = self.store.search(view, raw_coordinates(queries), 1, visible)
            return [hits[0].id if hits else None for hits in found]

        target = ServedView(served, view, self.banks.sizes)
        plan = plan_for(method, self.norm, target, queries.shape[0], raw_top1)
        expr = both(visible, milvus_filter(json.loads(where_key)) if where_key else None)
        fields = [METADATA] if with_metadata else []
        found = self.store.search(view, plan_coordinates(plan, queries), k + offset, expr, fields)
        found = [hits[offset:] for hits in found]
        originals = self.store.vectors(ORIGINAL, list({h.id for hits in found for h in hits}))
        ids, scores, sims, metadata = [], [], [], []
        d = self.dim
        for i, hits in enumerate(found):
            score = np.array([h.distance for h in hits], dtype=np.float64) + plan.offsets[i]
            rows = np.array(
                [originals.get(h.id, np.full(d + 5, np.nan, np.float32))[:d] for h in hits],
                dtype=np.float32,
            ).reshape(len(hits), d)
            sim = (rows @ queries[i]).astype(np.float64)
            keep = np.ones(len(hits), bool) if score_threshold is None else score >= score_threshold
            ids.append([h.id for h, f in zip(hits, keep, strict=True) if f])
            scores.append(score[keep])
            sims.append(sim[keep])
            metadata.append([h.entity[METADATA]["v"] for h, f in zip(hits, keep, strict=True) if f])
        return SearchResult(
            served.version, method, invgc, ids, scores, sims, metadata if with_metadata else None
        )

    def _stored_queries(self, ids: list[str], served: Served) -> np.ndarray:
        vectors = self.store.vectors(ORIGINAL, ids, f"{SEQ} <= {served.version}")
        missing = [i for i in ids if i not in vectors]
        if missing:
            raise UnknownIdError("query_ids", missing)
        return np.array([vectors[i][: self.dim] for i in ids], dtype=np.float32).reshape(
            len(ids), self.dim
        )

    # --- following (readers) and loading ---------------------------------------------------

    def refresh(self) -> bool:
        """Adopt the committed version if it moved (re-reading only the bank-state rows written
        since); True if it did. A reader's poll, and every process's start."""
        committed = self.store.version()
        served = self._served
        if committed is None or committed.version == served.version:
            return False
        # a process at version 0 (starting) or ahead of Milvus (collections rebuilt) reads all
        since = served.version if 0 < served.version < committed.version else -1
        tops = dict(served.tops) if since >= 0 else self._empty_tops()
        updates: dict[Key, list[tuple[int, dict]]] = {}
        for view, bank, chunk, value in self.store.bank_chunks(since):
            if (view, bank) in tops:
                updates.setdefault((view, bank), []).append((chunk, value))
        for key, chunks in updates.items():
            top = tops[key]
            ids, sims = top.ids.copy(), top.sims.copy()
            for chunk, value in chunks:
                first = chunk * BANK_CHUNK
                got_ids = np.array(value["ids"], dtype=object)
                width = min(top.k, got_ids.shape[1] if got_ids.ndim == 2 else 0)
                rows = slice(first, first + len(value["ids"]))
                ids[rows, :width] = got_ids[:, :width]
                sims[rows, :width] = np.array(value["sims"], dtype=np.float32)[:, :width]
            tops[key] = IdTopK(ids, sims, top.active)
        self._served = Served(committed.version, committed.size, tops)
        log.info(
            "following: version adopted",
            extra={"version": committed.version, "size": committed.size},
        )
        return True

    def load_gallery(
        self, ids: Sequence[str], embeddings: np.ndarray, metadata: Sequence[Metadata]
    ):
        """Fill an empty collection from the gallery files (the writer's first start), in
        chunks, then commit version 1. Meant for small galleries; big ones: the bulk load."""
        tops = self._empty_tops()
        id_array = np.array(list(ids), dtype=object)
        for start in range(0, len(ids), LOAD_CHUNK):
            stop = min(len(ids), start + LOAD_CHUNK)
            part = self._prepared(embeddings[start:stop])
            self._write_rows(list(ids[start:stop]), part, list(metadata[start:stop]), 1)
            tops = self._merged(tops, part, id_array[start:stop])
        self._write_tops(tops, None, 1)
        self.store.set_version(1, len(ids))
        self.refresh()

    # --- changing (the writer) -------------------------------------------------------------

    def upsert(
        self, ids: list[str], embeddings: np.ndarray, metadata: list[Metadata]
    ) -> ChangeResult:
        """Insert or replace items; embeddings (b, d) already validated and normalised."""
        dupes = [i for i, count in Counter(ids).items() if count > 1]
        if dupes:
            raise InputError("items", f"duplicate ids in one batch: {dupes[:10]}")
        return self._change(ids, embeddings.astype(np.float32, copy=False), metadata)

    def delete(self, ids: list[str]) -> ChangeResult:
        """Remove items by id; every id must exist (or nothing is removed)."""
        return self._change(list(dict.fromkeys(ids)), None, None)

    def _change(
        self, ids: list[str], embeddings: np.ndarray | None, metadata: list[Metadata] | None
    ) -> ChangeResult:
        if self.read_only:
            raise PermissionError("this replica is read-only")
        started = time.perf_counter()
        with self._lock:
            if self.lease is not None:
                self.lease.check()
            if self._dirty:
                self.recover()
            served = self._served
            version = served.version + 1
            existing = set(self.store.get_rows(ORIGINAL, ids, []))
            upsert = embeddings is not None
            if not upsert:
                missing = [i for i in ids if i not in existing]
                if missing:
                    raise UnknownIdError("ids", missing)
            size = served.size + (len(ids) - len(existing) if upsert else -len(ids))
            prepared = self._prepared(embeddings) if upsert else None
            tops = self._next_tops(served, prepared, ids, existing)
            warnings = self._screen(tops, ids, size) if upsert else ()
            try:
                self._put_intent(version, "upsert" if upsert else "delete", ids)
                if upsert:
                    assert metadata is not None and prepared is not None
                    self._write_rows(ids, prepared, metadata, version)
                else:
                    for view in reversed(self.views):  # the original row goes last
                        self.store.delete_rows(view, ids)
                self._write_tops(tops, served.tops, version)
                self.store.set_version(version, size)
                self.store.delete_states(f'{KEY} like "intent:%"')
            except BackendUnavailable:
                self._dirty = True  # Milvus may hold part of it: the next change recovers
                raise
            self._served = Served(version, size, tops)
        inserted = len(ids) - len(existing) if upsert else 0
        result = ChangeResult(
            version,
            size,
            inserted,
            len(existing) if upsert else 0,
            0 if upsert else len(ids),
            warnings,
        )
        log.info(
            "gallery changed",
            extra={
                "version": version,
                "size": size,
                "inserted": result.inserted,
                "updated": result.updated,
                "deleted": result.deleted,
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        return result

    def _prepared(self, embeddings: np.ndarray) -> dict[str, Any]:
        """The batch's views (rows and its own bank top-k), keyed by view name."""
        hub = self.screening.k if self.screening is not None else 0
        prepared = prepare_items(embeddings, self.banks, self.norm, self.invgc, hub_topk=hub)
        out = {ORIGINAL: prepared.original}
        if prepared.adjusted is not None:
            out[INVGC] = prepared.adjusted
        return out

    def _write_rows(
        self, ids: list[str], prepared: dict[str, Any], metadata: list[Metadata], seq: int
    ) -> None:
        for view in self.views:  # the original view first: recovery rebuilds the others from it
            batch = prepared[view]
            coords = np.hstack([batch.embeddings, batch.stats]).astype(np.float32)
            self.store.upsert_rows(view, ids, coords, metadata, seq)

    def _merged(
        self, tops: dict[Key, IdTopK], prepared: dict[str, Any], ids: np.ndarray
    ) -> dict[Key, IdTopK]:
        """``tops`` with a batch's own bank top-k merged in."""
        out = dict(tops)
        for (view, bank), top in tops.items():
            own = prepared[view].query_top if bank == QUERY else prepared[view].gallery_top
            out[(view, bank)] = top.merge(IdTopK.of_batch(ids, own.idx, own.sim, top.k, top.active))
        return out

    def _next_tops(
        self,
        served: Served,
        prepared: dict[str, Any] | None,
        ids: list[str],
        removed: set[str],
    ) -> dict[Key, IdTopK]:
        """The bank state after the change: the batch merged in; bank items whose top-k held a
        removed (deleted or replaced) id rescanned without those ids (then merged)."""
        tops = dict(served.tops)
        batch_ids = np.array(ids, dtype=object)
        for (view, bank), top in served.tops.items():
            batch = None
            if prepared is not None:
                own = prepared[view].query_top if bank == QUERY else prepared[view].gallery_top
                batch = IdTopK.of_batch(batch_ids, own.idx, own.sim, top.k, top.active)
            hit = np.flatnonzero(top.holding(removed))
            after = top.merge(batch) if batch is not None else top
            if hit.size:
                exclude = both(f"{SEQ} <= {served.version}", id_filter(sorted(removed), True))
                fresh = self._scan(view, self._bank(bank)[hit], top.k, top.active, exclude)
                if batch is not None:
                    fresh = fresh.merge(IdTopK(batch.ids[hit], batch.sims[hit], top.active))
                after = after.replace(hit, fresh)
            tops[(view, bank)] = after
        return tops

    def _scan(self, view: str, bank_rows: np.ndarray, k: int, active: int, expr: str) -> IdTopK:
        """Bank items' top-k over the stored gallery of ``view`` (a raw Milvus search)."""
        out = IdTopK.empty(bank_rows.shape[0], k, active)
        for row, hits in enumerate(self.store.search(view, raw_coordinates(bank_rows), k, expr)):
            out.ids[row, : len(hits)] = [h.id for h in hits]
            out.sims[row, : len(hits)] = [h.distance for h in hits]
        return out

    def _write_tops(
        self, tops: dict[Key, IdTopK], before: dict[Key, IdTopK] | None, seq: int
    ) -> None:
        """The bank-state rows that changed (all of them when ``before`` is None)."""
        for (view, bank), top in tops.items():
            chunks = None
            if before is not None:
                rows = top.changed_rows(before[(view, bank)])
                chunks = set((rows // BANK_CHUNK).tolist())
                if not chunks:
                    continue
            self.store.put_bank_state(view, bank, top.ids, top.sims, seq, chunks)

    def _screen(self, tops: dict[Key, IdTopK], ids: list[str], size: int) -> tuple[HubWarning, ...]:
        """Hub screening of the upserted ids against the bank state after the change (robust z
        of the query-bank k-occurrence, zeros included); refuses with ``reject``."""
        if self.screening is None:
            return ()
        occurrence = tops[(ORIGINAL, QUERY)].occurrence(self.screening.k)
        scale = robust_scale(list(occurrence.values()), size)
        counts = np.array([occurrence.get(i, 0) for i in ids], dtype=np.float64)
        z = scale.z(counts)
        warnings = tuple(
            HubWarning(i, int(c), float(s))
            for i, c, s in zip(ids, counts, z, strict=True)
            if s > self.screening.z
        )
        if warnings and self.screening.reject:
            raise SuspectedHubError(list(warnings))
        if warnings:
            log.warning("suspected hub upserted", extra={"ids": [w.id for w in warnings][:10]})
        return warnings

    def _put_intent(self, version: int, kind: str, ids: list[str]) -> None:
        """The change in flight: its version, kind and ids, in rows of INTENT_CHUNK ids."""
        parts = [ids[i : i + INTENT_CHUNK] for i in range(0, len(ids), INTENT_CHUNK)] or [[]]
        rows = [
            (f"intent:{n:06d}", {"version": version, "kind": kind, "ids": part})
            for n, part in enumerate(parts)
        ]
        self.store.put_states(rows, version)

    # --- crash recovery --------------------------------------------------------------------

    def recover(self) -> bool:
        """Finish a change that was written in part (a crash or a Milvus error): True if there
        was one. Upserted rows that reached the original view are kept and their other views
        rebuilt from them; a delete is completed; then the bank state is recomputed by
        rescanning every bank item against Milvus and the intent's version committed. Every
        acknowledged change had committed its version, so none is lost; the interrupted one
        (never acknowledged) lands for the items whose original row was written."""
        committed = self.store.version()
        intents = self.store.states(f'{KEY} like "intent:%"')
        if committed is None or not intents:
            self._dirty = False
            return False
        version = max(int(r[VALUE]["version"]) for r in intents)
        if version > committed.version:
            kind = intents[0][VALUE]["kind"]
            ids = [
                i for r in intents if int(r[VALUE]["version"]) == version for i in r[VALUE]["ids"]
            ]
            log.warning(
                "recovering an interrupted change",
                extra={"version": version, "kind": kind, "items": len(ids)},
            )
            if kind == "delete":
                for view in reversed(self.views):
                    self.store.delete_rows(view, ids)
            elif self.invgc is not None:
                self._rebuild_other_views(ids, version)
            tops = self._empty_tops()
            visible = f"{SEQ} <= {version}"
            for (view, bank), top in tops.items():
                bank_rows = self._bank(bank)
                tops[(view, bank)] = self._scan(view, bank_rows, top.k, top.active, visible)
            self._write_tops(tops, None, version)
            self.store.set_version(version, self.store.count(ORIGINAL, visible))
        self.store.delete_states(f'{KEY} like "intent:%"')
        self._dirty = False
        self._served = Served(0, 0, self._empty_tops())
        self.refresh()
        return True

    def _rebuild_other_views(self, ids: list[str], version: int) -> None:
        """The adjusted rows of the upserted items whose original row was written."""
        rows = self.store.get_rows(ORIGINAL, ids, [VECTOR, METADATA], f"{SEQ} == {version}")
        done = [i for i in ids if i in rows]
        if not done:
            return
        embeddings = np.array([rows[i][VECTOR][: self.dim] for i in done], dtype=np.float32)
        prepared = self._prepared(embeddings)
        metadata = [rows[i][METADATA]["v"] for i in done]
        for view in self.views[1:]:
            batch = prepared[view]
            coords = np.hstack([batch.embeddings, batch.stats]).astype(np.float32)
            self.store.upsert_rows(view, done, coords, metadata, version)
