"""One-item changes over HTTP: upsert, delete and replacement latency, and concurrent writers.

A ``hubless serve`` subprocess (:class:`benchmarks.load_test.Server`) serves a durable gallery
(the SQLite store in its data dir, ``synchronous=FULL``) with LocalAdj InvGC on: 100k × 384
synthetic unit vectors and synthetic banks of 10k each (issue 16; ``measure(bank_rows=…)``
takes smaller banks where the precompute of 2 × 10k would take too long), or the bundled
2000-item demo slice with ``--quick``. Deletes and replacements leave the old rows dead
(tombstones) and a background thread drops them past ``HUBLESS_DEAD_SHARE``. One keep-alive
client sends one-item changes back to back (latency is the change's own: validation, the next
state, hub screening, the durable commit, the swap), then 16 clients each upsert one item at a
time for a few seconds (items/s).

    python -m benchmarks.run --only writes [--quick]
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

import httpx
import numpy as np
import orjson

from benchmarks.common import Row
from service.engine.changes import Upsert
from service.engine.persistence import GalleryStore
from service.harness import Server, write_gallery

SECTION = "writes"
LATENCY_GOAL = 5.0  # ms, p50 of a one-item upsert / delete / replacement (issue 16)
BANK_ROWS = 10_000  # rows of each synthetic bank at 100k (issue 16)
WRITERS = 16
WRITERS_GOAL = 5000.0  # items/s for 16 one-item writers (issue 16)
HEADERS = {"Content-Type": "application/json"}


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _gallery(directory: Path, quick: bool, bank_rows: int) -> dict[str, str]:
    """The served files: the demo slice (quick) or 100k × 384 rows and two synthetic banks."""
    env = write_gallery(directory, rows=2000, bank_rows=2000)
    if not quick:
        rng = np.random.default_rng(0)
        np.save(env["HUBLESS_GALLERY"], _unit(rng, 100_000, 384))
        np.save(env["HUBLESS_QUERY_BANK"], _unit(rng, bank_rows, 384))
        np.save(env["HUBLESS_GALLERY_BANK"], _unit(rng, bank_rows, 384))
        del env["HUBLESS_GALLERY_IDS"]  # ids are the row numbers
    return env | {"HUBLESS_LOG_LEVEL": "WARNING", "HUBLESS_INVGC": "true"}


class _Writer:
    """Fresh ids and vectors for one-item changes, and the timed requests."""

    def __init__(self, client: httpx.Client, dim: int, seed: int) -> None:
        self.client, self.dim = client, dim
        self.rng = np.random.default_rng(seed)
        self._fresh = count()
        self.seed = seed

    def new_id(self) -> str:
        return f"w{self.seed}-{next(self._fresh)}"

    def upsert(self, item_id: str) -> float:
        vector = _unit(self.rng, 1, self.dim)[0].tolist()
        body = orjson.dumps({"items": [{"id": item_id, "embedding": vector}]})
        return self._timed(lambda: self.client.put("/gallery", content=body, headers=HEADERS))

    def delete(self, item_id: str) -> float:
        return self._timed(lambda: self.client.delete(f"/gallery/{item_id}"))

    @staticmethod
    def _timed(send: Callable[[], httpx.Response]) -> float:
        started = time.perf_counter()
        response = send()
        response.raise_for_status()
        return time.perf_counter() - started


def _latency_rows(writer: _Writer, changes: int, size: int, banks: str) -> list[Row]:
    """p50 / p99 of one-item upserts of new ids, replacements and deletes, back to back."""
    for _ in range(3):  # warm-up
        writer.upsert(writer.new_id())
    inserted = [writer.new_id() for _ in range(changes)]
    times = {
        "upsert (new id)": [writer.upsert(i) for i in inserted],
        "replacement (upsert of an existing id)": [writer.upsert(i) for i in inserted],
        "delete": [writer.delete(i) for i in inserted],
    }
    rows = []
    where = f"n = {size:,}, banks {banks}, durable, LocalAdj InvGC on, {changes} changes"
    for name, seconds in times.items():
        p50, p99 = (float(np.percentile(seconds, q)) * 1e3 for q in (50, 99))
        rows.append(
            Row(SECTION, f"one-item {name}: HTTP p50", p50, "ms", LATENCY_GOAL, False, where)
        )
        rows.append(Row(SECTION, f"one-item {name}: HTTP p99", p99, "ms", detail=where))
    return rows


def _clients(url: str, dim: int, seconds: float, act: Callable[[_Writer], object]) -> float:
    """``WRITERS`` clients each calling ``act`` back to back for ``seconds``: calls per second."""
    done = [0] * WRITERS
    errors: list[str] = []
    start = threading.Barrier(WRITERS + 1)
    deadline = [0.0]

    def run(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            writer = _Writer(client, dim, 1000 + index)
            act(writer)  # connect and warm up
            start.wait()
            while time.perf_counter() < deadline[0]:
                try:
                    act(writer)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    return
                done[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + 1e9
    start.wait()
    began = time.perf_counter()
    deadline[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"concurrent clients failed: {errors[:3]}")
    return sum(done) / elapsed


def _concurrent_rows(url: str, dim: int, seconds: float) -> list[Row]:
    """``WRITERS`` clients each upserting one new item at a time for ``seconds``, and the same
    clients asking ``/healthz`` (no work at all): the most requests per second these clients
    and the server's HTTP layer reach on this machine, the ceiling of the first figure."""
    rate = _clients(url, dim, seconds, lambda w: w.upsert(w.new_id()))
    ceiling = _clients(url, dim, seconds, lambda w: w.client.get("/healthz").raise_for_status())
    return [
        Row(
            SECTION,
            f"{WRITERS} concurrent one-item upserters",
            rate,
            "items/s",
            WRITERS_GOAL,
            True,
            f"{rate * seconds:.0f} upserts in {seconds:.0f} s, each acknowledged once durable; "
            f"{rate / ceiling:.0%} of the HTTP ceiling below",
        ),
        Row(
            SECTION,
            f"{WRITERS} concurrent clients, GET /healthz (HTTP ceiling)",
            ceiling,
            "requests/s",
            detail="the same clients and server doing no work: no write rate can exceed it here",
        ),
    ]


def _commit_rows(directory: Path, dim: int, changes: int) -> list[Row]:
    """One-item changes committed to a store of their own on the same disk, nothing else: the
    floor of a lone writer's latency (SQLite's rollback journal with ``synchronous=FULL``
    syncs the journal, its directory, the journal header and the database per commit)."""
    store = GalleryStore(directory)
    store.recover()
    rng = np.random.default_rng(1)
    seconds = []
    try:
        for n in range(changes):
            change = Upsert((f"c{n}",), _unit(rng, 1, dim), (None,))
            started = time.perf_counter()
            store.append(change)
            seconds.append(time.perf_counter() - started)
    finally:
        store.close()
    p50 = float(np.percentile(seconds, 50)) * 1e3
    where = f"{changes} commits, {directory.resolve().parent} file system, same run"
    return [Row(SECTION, "one-change SQLite commit alone: p50", p50, "ms", detail=where)]


def measure(quick: bool, bank_rows: int = BANK_ROWS) -> list[Row]:
    changes, seconds = (30, 2.0) if quick else (200, 5.0)
    with tempfile.TemporaryDirectory(prefix="bench-writes-") as tmp:
        workdir = Path(tmp)
        env = _gallery(workdir / "input", quick, bank_rows)
        server = Server(workdir / "data", env).start()
        try:
            server.wait_ready(timeout=90 if quick else 600)  # the 100k precompute takes minutes
            with httpx.Client(base_url=server.url, timeout=60.0) as client:
                size = int(client.get("/gallery", params={"limit": 1}).json()["total"])
                dim = int(np.load(env["HUBLESS_GALLERY"], mmap_mode="r").shape[1])
                banks = "2 × 2,000" if quick else f"2 × {bank_rows:,}"
                rows = _latency_rows(_Writer(client, dim, 0), changes, size, banks)
            rows += _concurrent_rows(server.url, dim, seconds)
            rows += _commit_rows(workdir / "commits", dim, changes)
        finally:
            server.stop()
    return rows
