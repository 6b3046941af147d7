"""Concurrent searches share one pass over the gallery.

A one-query search is a matrix–vector product: it streams the whole gallery from memory for a
single query, so eight concurrent one-query requests stream it eight times and, on two cores,
mostly wait for each other (and, with BLAS on every core, several products at once make its
threads fight: eight clients got half the queries/s of one). Here a few searches run at a time
for the same engine, method and view (:func:`search_slots`: one per core that BLAS leaves free);
requests that arrive while they run queue up, and when one ends, the first queued request
searches for every queued query in one batch (one matrix product, one pass over the gallery; at
most :data:`MAX_BATCH_QUERIES` queries) and hands each request its rows. A request that finds a
slot free searches at once, alone, exactly as without this module: no added latency, and a batch
never waits for requests that have not arrived.

A batch searches ``max(k + offset)`` of its requests with offset 0 and no threshold, and each
request keeps its own slice (``offset``, ``k``, ``score_threshold`` applied as the engine
does); top-k lists are prefixes of longer ones (ties go to the lower row), so the hits are those
of a lone search up to float32 rounding (a product of 8 queries may round a score's last bit
differently from a product of one). If a batch fails, each of its requests searches alone, so
an error is always the request's own.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np

from service.engine import Engine, SearchResult

#: Most queries one shared search takes (a batch stops growing here; the rest waits its turn).
MAX_BATCH_QUERIES = 256


@dataclass(eq=False)
class _Request:
    queries: np.ndarray
    k: int
    offset: int
    score_threshold: float | None
    done: threading.Event = field(default_factory=threading.Event)
    #: set instead of a result when this request must run the next batch (these requests)
    batch: list[_Request] | None = None
    result: SearchResult | None = None
    error: BaseException | None = None


def search_slots() -> int:
    """Searches of one key that may run at once: the cores divided by BLAS's threads per
    product (``OPENBLAS_NUM_THREADS``, else ``OMP_NUM_THREADS``, else every core). By default
    BLAS spreads one product over every core, so one search runs and the rest are batched;
    with ``OPENBLAS_NUM_THREADS=1`` each core runs a search of its own."""
    cores = os.cpu_count() or 1
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return max(1, cores // int(value))
    return 1


class SearchCoalescer:
    """``search`` as :meth:`Engine.search`, sharing one engine search among concurrent calls."""

    def __init__(
        self, max_batch_queries: int = MAX_BATCH_QUERIES, max_running: int | None = None
    ) -> None:
        self.max_batch_queries = max_batch_queries
        self.max_running = max_running or search_slots()
        self._lock = threading.Lock()
        #: key -> searches of that key running; a key is present exactly while one runs
        self._running: dict[tuple[int, str, bool], int] = {}
        #: key -> requests waiting for a running search of that key to end
        self._waiting: dict[tuple[int, str, bool], list[_Request]] = {}

    def search(
        self,
        engine: Engine,
        queries: np.ndarray,
        *,
        k: int,
        method: str,
        invgc: bool,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> SearchResult:
        request = _Request(queries, k, offset, score_threshold)
        key = (id(engine), method, invgc)
        with self._lock:
            running = self._running.get(key, 0)
            if running < self.max_running:
                self._running[key] = running + 1
                request.batch = [request]
            else:
                self._waiting.setdefault(key, []).append(request)
        if request.batch is None:
            request.done.wait()
        if request.batch is not None:  # this thread searches for the batch
            try:
                self._run(engine, method, invgc, request.batch)
            finally:
                self._hand_over(key)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _hand_over(self, key: tuple[int, str, bool]) -> None:
        """Make the first waiting request run the next batch, or free the slot."""
        with self._lock:
            waiting = self._waiting.get(key)
            if not waiting:
                self._running[key] -= 1
                if not self._running[key]:
                    del self._running[key]
                return
            batch = [waiting.pop(0)]
            total = len(batch[0].queries)
            while waiting and total + len(waiting[0].queries) <= self.max_batch_queries:
                total += len(waiting[0].queries)
                batch.append(waiting.pop(0))
            if not waiting:
                del self._waiting[key]
        batch[0].batch = batch
        batch[0].done.set()

    @staticmethod
    def _run(engine: Engine, method: str, invgc: bool, batch: list[_Request]) -> None:
        """Search for every request of ``batch``, set each one's result or error and wake the
        others (the calling thread is ``batch[0]``'s)."""
        try:
            if len(batch) > 1 and not _shared(engine, method, invgc, batch):
                for r in batch:
                    r.result = None
            for r in batch:
                if r.result is None:  # alone, or the shared search failed: its own search
                    try:
                        r.result = engine.search(
                            r.queries,
                            k=r.k,
                            method=method,
                            invgc=invgc,
                            offset=r.offset,
                            score_threshold=r.score_threshold,
                        )
                    except Exception as exc:
                        r.error = exc
        finally:
            for r in batch[1:]:
                if r.result is None and r.error is None:  # interrupted: never leave one hanging
                    r.error = RuntimeError("the shared search was interrupted")
                r.done.set()


def _shared(engine: Engine, method: str, invgc: bool, batch: list[_Request]) -> bool:
    """One engine search for all of ``batch``, sliced into each request's result; False (and
    results possibly partial) if it failed."""
    try:
        depth = max(r.k + r.offset for r in batch)
        stacked = np.concatenate([r.queries for r in batch])
        shared = engine.search(stacked, k=depth, method=method, invgc=invgc)
        start = 0
        for r in batch:
            r.result = _slice(shared, start, r)
            start += len(r.queries)
    except Exception:
        return False
    return True


def _slice(shared: SearchResult, start: int, request: _Request) -> SearchResult:
    """The part of a shared result that answers ``request`` (its rows, offset, k, threshold)."""
    window = slice(request.offset, request.offset + request.k)
    rows = range(start, start + len(request.queries))
    ids = [shared.ids[i][window] for i in rows]
    scores = [shared.scores[i][window] for i in rows]
    sims = [shared.similarities[i][window] for i in rows]
    if request.score_threshold is not None:
        keep = [s >= request.score_threshold for s in scores]
        ids = [
            [i for i, m in zip(row, mask, strict=True) if m]
            for row, mask in zip(ids, keep, strict=True)
        ]
        scores = [s[m] for s, m in zip(scores, keep, strict=True)]
        sims = [c[m] for c, m in zip(sims, keep, strict=True)]
    return SearchResult(shared.version, shared.method, shared.invgc, ids, scores, sims)


#: The process's coalescer (searches of different engines never share a batch).
COALESCER = SearchCoalescer()
