"""Online updates: upserts per second and delete cost through ``Engine.upsert`` / ``Engine.delete``.

Banks of 10k items each (issue 6), exact backend, galleries of 10k and 100k × 384 (synthetic
unit vectors: the cost of a change does not depend on the values). For each gallery, batches of
1, 10, 100 and 1000 new items with LocalAdj InvGC on (the default) and off; replacements of
existing items and deletions (both leave the old rows dead, O(batch): tombstones), and the
drop of the dead rows that follows in the background (O(n·d)); the same upserts with a
:class:`GalleryStore` attached, i.e. durable (fsynced) before visible, as the service runs; the
fsync'd log append alone; and full-adjacency InvGC, whose every change rebuilds the whole
adjusted view (O(n·N·d), by design of the method: reported, not a goal).

Throughput is items / wall time over consecutive changes, so the amortised reallocations of the
spare-row buffers are included. The precompute of each gallery is not part of any figure.

    python -m benchmarks.run --only updates [--quick]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

import numpy as np

from benchmarks.common import Row
from service.algorithms import Banks, InvGCParams, NormParams, PreparedItems, prepare_items
from service.backends import backend_factory
from service.engine import Engine
from service.engine.changes import Upsert
from service.engine.persistence import GalleryStore

SECTION = "updates"
GOAL = 1000.0  # items/s, issue 6


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class _Bench:
    """One gallery's engines (LocalAdj on, off, optionally full) and fresh ids to insert."""

    def __init__(self, n: int, d: int, bank: int, *, full: bool) -> None:
        self.n, self.d = n, d
        self.rng = np.random.default_rng(n)
        gallery = _unit(self.rng, n, d)
        self.banks = Banks(_unit(self.rng, bank, d), _unit(self.rng, bank, d))
        self.norm = NormParams(nnn_topk=min(128, bank // 4))
        self.ids = tuple(f"g{i}" for i in range(n))
        local = InvGCParams()
        prepared = prepare_items(gallery, self.banks, self.norm, local)
        self.engines = {
            "LocalAdj": self._engine(prepared, local),
            "InvGC off": self._engine(PreparedItems(prepared.original, None), None),
        }
        if full:
            params = InvGCParams(adjacency="full")
            self.engines["full adjacency"] = self._engine(
                prepare_items(gallery, self.banks, self.norm, params), params
            )
        self._fresh = count()

    def _engine(self, prepared: PreparedItems, invgc: InvGCParams | None) -> Engine:
        metadata = (None,) * self.n
        backend = backend_factory("exact")
        return Engine.from_prepared(
            self.ids, metadata, prepared, self.banks, self.norm, invgc, backend
        )

    def new_ids(self, b: int) -> list[str]:
        return [f"new{next(self._fresh)}" for _ in range(b)]

    def items(self, b: int) -> np.ndarray:
        return _unit(self.rng, b, self.d)

    @property
    def label(self) -> str:
        return f"n={self.n // 1000}k" if self.n >= 1000 else f"n={self.n}"


def _throughput(change: Callable[[], int], changes: int) -> tuple[float, float]:
    """(items per second, seconds per change) over ``changes`` consecutive calls of ``change``
    (which returns how many items it changed), after one warm-up call."""
    change()
    items, started = 0, time.perf_counter()
    for _ in range(changes):
        items += change()
    elapsed = time.perf_counter() - started
    return items / elapsed, elapsed / changes


def _upsert(bench: _Bench, engine: Engine, b: int) -> Callable[[], int]:
    def change() -> int:
        engine.upsert(bench.new_ids(b), bench.items(b), [None] * b)
        return b

    return change


def _replace(bench: _Bench, engine: Engine, b: int) -> Callable[[], int]:
    def change() -> int:
        ids = list(bench.rng.choice(np.asarray(engine.state.ids), size=b, replace=False))
        engine.upsert(ids, bench.items(b), [None] * b)
        return b

    return change


def _delete(bench: _Bench, engine: Engine, b: int) -> Callable[[], int]:
    def change() -> int:
        # delete items inserted before (keeps the original gallery size steady)
        engine.upsert(ids := bench.new_ids(b), bench.items(b), [None] * b)
        started = time.perf_counter()
        engine.delete(ids)
        _delete.seconds += time.perf_counter() - started  # type: ignore[attr-defined]
        return b

    return change


def _deletes(bench: _Bench, engine: Engine, b: int, changes: int) -> tuple[float, float]:
    """(items deleted per second, seconds per delete), timing only the deletes."""
    _delete.seconds = 0.0  # type: ignore[attr-defined]
    change = _delete(bench, engine, b)
    change()
    _delete.seconds = 0.0  # type: ignore[attr-defined]
    for _ in range(changes):
        change()
    seconds = _delete.seconds / changes  # type: ignore[attr-defined]
    return b / seconds, seconds


def _rows_for(bench: _Bench, batches: tuple[int, ...], quick: bool) -> list[Row]:
    rows: list[Row] = []
    budget = 30 if quick else 60  # changes at batch 1; fewer for larger batches

    def repeats(b: int) -> int:
        return max(2, budget // max(1, int(np.sqrt(b))))

    for mode in ("LocalAdj", "InvGC off"):
        engine = bench.engines[mode]
        where = f"{bench.label}, banks {bench.banks.sizes[0]:,}, {mode}"
        for b in batches:
            rate, per = _throughput(_upsert(bench, engine, b), repeats(b))
            rows.append(
                Row(
                    SECTION,
                    f"upsert new items, batch {b}, {where}",
                    rate,
                    "items/s",
                    GOAL,
                    True,
                    f"{per * 1e3:.2f} ms per change",
                )
            )
        for b in (1, 100):
            rate, per = _throughput(_replace(bench, engine, b), max(2, repeats(b) // 4))
            rows.append(
                Row(
                    SECTION,
                    f"upsert replacing items, batch {b}, {where}",
                    rate,
                    "items/s",
                    detail=f"{per * 1e3:.2f} ms per change (tombstone + append)",
                )
            )
        for b in (1, 100):
            rate, per = _deletes(bench, engine, b, max(2, repeats(b) // 4))
            rows.append(
                Row(
                    SECTION,
                    f"delete, batch {b}, {where}",
                    per * 1e3,
                    "ms",
                    detail=f"{rate:.0f} items/s (tombstones)",
                )
            )
        rows.append(_drop_row(engine, where))
    rows += _durable(bench, batches)
    if "full adjacency" in bench.engines:
        engine = bench.engines["full adjacency"]
        rate, per = _throughput(_upsert(bench, engine, 10), 2)
        rows.append(
            Row(
                SECTION,
                f"upsert new items, batch 10, {bench.label}, full adjacency",
                rate,
                "items/s",
                detail=f"{per:.2f} s per change: every adjusted row is rebuilt",
            )
        )
    return rows


def _drop_row(engine: Engine, where: str) -> Row:
    """The drop of the dead rows the deletes and replacements left (the background compaction
    a larger share of them starts; here run at once)."""
    dead, rows = engine.state.dead, engine.state.row_count
    started = time.perf_counter()
    engine.compact_tombstones()
    seconds = time.perf_counter() - started
    detail = f"{dead} dead of {rows:,} rows, off the request path (writes wait, searches do not)"
    return Row(SECTION, f"drop of dead rows, {where}", seconds * 1e3, "ms", detail=detail)


def _durable(bench: _Bench, batches: tuple[int, ...]) -> list[Row]:
    """Upserts with the change log attached (fsync per change), and the log append alone."""
    rows: list[Row] = []
    engine = bench.engines["LocalAdj"]
    with tempfile.TemporaryDirectory(prefix="bench-updates-") as tmp:
        store = GalleryStore(Path(tmp))
        store.recover()
        engine.attach_store(store)
        try:
            for b in batches[:3]:
                rate, per = _throughput(_upsert(bench, engine, b), max(5, 30 // b))
                rows.append(
                    Row(
                        SECTION,
                        f"durable upsert (fsynced log), batch {b}, {bench.label}, LocalAdj",
                        rate,
                        "items/s",
                        GOAL,
                        True,
                        f"{per * 1e3:.2f} ms per change",
                    )
                )
            for b in batches[:3]:
                change = Upsert(tuple(bench.new_ids(b)), bench.items(b), (None,) * b)
                store.append(change)
                started, calls = time.perf_counter(), 20
                for _ in range(calls):
                    store.append(change)
                per = (time.perf_counter() - started) / calls
                rows.append(
                    Row(
                        SECTION,
                        f"change-log append + fsync alone, batch {b}",
                        per * 1e3,
                        "ms",
                        detail=f"{bench.d} dims, {Path(tmp).resolve().parent} file system",
                    )
                )
        finally:
            engine._store = None  # the engine is reused without a log
    return rows


def measure(quick: bool) -> list[Row]:
    if quick:
        return _rows_for(_Bench(2000, 64, 500, full=True), (1, 10, 100), quick)
    rows: list[Row] = []
    for n in (10_000, 100_000):
        rows += _rows_for(_Bench(n, 384, 10_000, full=n == 10_000), (1, 10, 100, 1000), quick)
    return rows
