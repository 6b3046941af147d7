"""The live query bank: served ``/search`` queries join the query bank (SPEC "Live query bank").

The bank is ``[rows of the bank file …, served rows]`` with at most ``capacity`` rows. The file's
rows always stay; the ``capacity − file rows`` *slots* hold served queries (L2-normalised, as
searched): in the order served while there is room, then by seeded reservoir sampling
(Vitter's algorithm R): the t-th served query (t counted from 0 over the bank's whole life,
restarts included) replaces slot ``j = h(seed, t) mod (t + 1)`` if ``j < slots``, else is not
kept; ``h`` is the SplitMix64 mix, so the bank is a reproducible function of the seed and the
queries in order served. Each served query so far had the same chance to be in the bank.

Searching never waits for the bank: :meth:`LiveQueryBank.offer` copies the queries into a
bounded pending buffer (O(m·d)). :meth:`LiveQueryBank.refresh` (a background thread every
``HUBLESS_LIVE_QUERY_BANK_REFRESH_SECONDS``, when the buffer fills, or ``POST
/admin/query-bank/refresh``) applies them: the next bank is computed, the engine recomputes
every statistic with it exactly as a fresh start would (:meth:`Engine.replace_query_bank`),
the rows are committed to the store, and bank and gallery state become visible together.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.engine.query_bank_store import QueryBankStore
from service.io import DataError

if TYPE_CHECKING:
    from service.engine.engine import Engine

log = logging.getLogger(__name__)

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output mix of each uint64 (wrapping arithmetic)."""
    z = x + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def reservoir_slots(seen: int, filled: int, count: int, slots: int, seed: int) -> np.ndarray:
    """The slot of each of ``count`` new served rows (numbers ``seen, seen+1, …``), −1 if the
    row is not kept; ``filled`` slots of ``slots`` hold rows already.

    Free slots are filled in order; after that, algorithm R with the draw
    ``h(seed, t) mod (t + 1)``. Later rows of one batch may take the slot of earlier ones.
    """
    out = np.full(count, -1, dtype=np.int64)
    free = min(max(0, slots - filled), count)
    out[:free] = np.arange(filled, filled + free)
    t = np.arange(seen + free, seen + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(t ^ np.uint64((seed * _GOLDEN) & _MASK))
    draw = (mixed % (t + np.uint64(1))).astype(np.int64)
    out[free:] = np.where(draw < slots, draw, -1)
    return out


@dataclass(frozen=True)
class LiveBankStatus:
    size: int
    pending: int
    version: int

    def as_dict(self) -> dict[str, int]:
        return {"size": self.size, "pending": self.pending, "version": self.version}


class LiveQueryBank:
    """The served rows, the pending buffer and the background refresh of one engine."""

    def __init__(
        self,
        file_rows: np.ndarray,
        store: QueryBankStore,
        *,
        capacity: int,
        max_pending: int,
        seed: int,
    ) -> None:
        self.file_rows = file_rows
        self.dim = file_rows.shape[1]
        self.slots = capacity - file_rows.shape[0]
        if self.slots < 1:
            raise DataError(
                f"HUBLESS_LIVE_QUERY_BANK_SIZE={capacity} leaves no room for served queries "
                f"next to the bank file's {file_rows.shape[0]} rows; raise it"
            )
        self.store, self.max_pending, self.seed = store, max_pending, seed
        stored = store.load(self.dim)
        if stored.rows.shape[0] > self.slots:
            log.warning(
                "live query bank: more stored rows than slots; keeping the first",
                extra={"stored": stored.rows.shape[0], "slots": self.slots},
            )
        self.served = stored.rows[: self.slots]
        self.seen, self.version = stored.seen, stored.version
        self.dropped = 0  # queries not collected because the pending buffer was full
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._applying = 0  # rows taken by the refresh in progress
        self._pending_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rows(self) -> np.ndarray:
        """(size, d) the query bank: the file's rows, then the served ones by slot."""
        return np.concatenate([self.file_rows, self.served])

    def status(self) -> LiveBankStatus:
        """Size and version of the bank served; pending counts rows until they are applied."""
        size = self.file_rows.shape[0] + self.served.shape[0]
        return LiveBankStatus(size, self._pending_rows + self._applying, self.version)

    # --- the search path --------------------------------------------------------------------

    def offer(self, queries: np.ndarray) -> None:
        """Queue served queries (m, d), normalised; O(m·d), never waits for a refresh. Beyond
        ``max_pending`` pending rows the rest are dropped (counted in ``dropped``)."""
        with self._pending_lock:
            room = max(0, self.max_pending - self._pending_rows)  # a put-back may overfill
            taken = queries[:room]
            if taken.shape[0]:
                self._pending.append(np.array(taken, dtype=np.float32))
                self._pending_rows += taken.shape[0]
            self.dropped += queries.shape[0] - taken.shape[0]
            full = self._pending_rows >= self.max_pending
        if full:
            self._wake.set()

    # --- applying ---------------------------------------------------------------------------

    def _take(self) -> np.ndarray:
        with self._pending_lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
            self._applying = sum(p.shape[0] for p in pending)  # still pending for status()
        return np.concatenate(pending) if pending else np.empty((0, self.dim), np.float32)

    def _put_back(self, rows: np.ndarray) -> None:
        """A failed refresh loses nothing: its rows go back in front of newer ones."""
        with self._pending_lock:
            self._pending.insert(0, rows)
            self._pending_rows += rows.shape[0]
            self._applying = 0

    def refresh(self, engine: Engine | None) -> LiveBankStatus:
        """Apply the pending rows: the next bank, recomputed statistics, committed, swapped in.

        ``engine=None`` only commits them to the store (shutdown: the next start applies them).
        """
        with self._refresh_lock:
            rows = self._take()
            if not rows.shape[0]:
                return self.status()
            try:
                self._apply(rows, engine)
            except BaseException:
                self._put_back(rows)
                raise
            finally:
                self._applying = 0
            return self.status()

    def _apply(self, rows: np.ndarray, engine: Engine | None) -> None:
        filled = self.served.shape[0]
        slots = reservoir_slots(self.seen, filled, rows.shape[0], self.slots, self.seed)
        keep = slots >= 0
        # a slot taken twice in one batch holds the later row: keep each slot's last occurrence
        last = np.unique(slots[keep][::-1], return_index=True)[1]
        chosen = np.flatnonzero(keep)[::-1][last]
        where, kept = slots[chosen], rows[chosen]
        served = np.empty((max(filled, int(where.max(initial=-1)) + 1), self.dim), np.float32)
        served[:filled] = self.served
        served[where] = kept
        seen, version = self.seen + rows.shape[0], self.version + (1 if where.size else 0)

        def commit() -> None:
            self.store.commit(where, kept, dim=self.dim, seen=seen, version=version)

        started = time.perf_counter()
        if engine is None or not where.size:
            commit()
        else:
            bank = np.concatenate([self.file_rows, served])
            engine.replace_query_bank(bank, commit=commit)
        self.served, self.seen, self.version = served, seen, version
        log.info(
            "live query bank refreshed",
            extra={
                "applied": rows.shape[0],
                "kept": int(where.size),
                "size": self.file_rows.shape[0] + served.shape[0],
                "version": version,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    # --- the background refresh -------------------------------------------------------------

    def start(self, engine: Engine, interval: float) -> None:
        """Refresh in a background thread every ``interval`` seconds (0: only when the pending
        buffer fills) while there are pending rows."""
        self._thread = threading.Thread(
            target=self._run, args=(engine, interval or None), name="live-query-bank", daemon=True
        )
        self._thread.start()

    def _run(self, engine: Engine, interval: float | None) -> None:
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh(engine)
            except Exception:  # logged; the rows stay pending for the next attempt
                log.exception("live query bank refresh failed")
                self._stop.wait(interval or 1.0)

    def close(self) -> None:
        """Stop the background thread and commit pending rows to the store (not applied: the
        next start applies them)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.refresh(None)
        finally:
            self.store.close()
