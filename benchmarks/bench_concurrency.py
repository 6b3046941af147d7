"""Concurrent search over HTTP: queries/s of 8 clients against 1 client, batch 1, per thread
setting of the server.

A ``hubless serve`` subprocess (:class:`benchmarks.load_test.Server`, 127.0.0.1) serves a
gallery; client threads (one keep-alive ``http.client`` connection each, bodies encoded
beforehand, so the client's own CPU use stays small) send one-query ``dualis`` searches back
to back. Phases of 1 and of 8 clients alternate (the best of each kept: on a shared machine,
load only ever lowers a rate). Each phase also records the CPU time the server and the client
process used, in cores (CPU seconds / wall seconds): 8 clients can only beat one by as much as
the server gets more cores busy.

Thread settings compared (each a server process of its own):

- ``default``: the environment as it is (OpenBLAS and OpenMP start one thread per core).
- ``OPENBLAS_NUM_THREADS=1``: each request's BLAS runs on the request's own thread; the
  concurrency comes from the request threads (uvicorn's thread pool, 40 by default), not from
  BLAS threads that several requests would share.

Both serve through ``service/api/coalesce.py`` (concurrent searches share one pass over the
gallery). Two more rows take HTTP away: threads of this process calling ``Engine.search``
directly and through the coalescer, on the engine the server loaded (its precompute cache).

    python -m benchmarks.run --only concurrency           # 50k × 384 from real vectors, ~2 min
    python -m benchmarks.run --only concurrency --quick   # 300 demo items: a smoke test
"""

from __future__ import annotations

import http.client
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from benchmarks.bench_ann import jittered
from benchmarks.bench_http import _in_process as _engine
from benchmarks.common import Row
from service.algorithms import check_embeddings
from service.api.coalesce import COALESCER
from service.engine import Engine
from service.harness import LOOPBACK, Server, demo_queries, write_gallery
from service.settings import DEMO_DIR

SECTION = "concurrency"
CLIENTS = 8
GOAL = 1.6
METHOD = "dualis"
LARGE = 50_000
#: name -> extra environment of the server process
THREAD_SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "OPENBLAS_NUM_THREADS=1": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
}


@dataclass(frozen=True)
class Phase:
    """One measurement: ``clients`` threads for ``seconds``."""

    clients: int
    queries: int
    seconds: float
    server_cores: float
    client_cores: float

    @property
    def rate(self) -> float:
        return self.queries / self.seconds


def _gallery(directory: Path, quick: bool) -> dict[str, str]:
    """300 demo items (quick) or 50k items made from the real vectors; demo banks."""
    env = write_gallery(directory, rows=300 if quick else 2000, bank_rows=2000)
    if not quick:
        pool = np.concatenate(
            [
                np.load(DEMO_DIR / f"{name}.npy").astype(np.float32)
                for name in ("gallery", "val_gallery")
            ]
        )
        np.save(env["HUBLESS_GALLERY"], jittered(pool, LARGE))
        del env["HUBLESS_GALLERY_IDS"]  # ids are the row numbers
    return env | {"HUBLESS_LOG_LEVEL": "WARNING"}


def _bodies(count: int) -> list[bytes]:
    """One-query request bodies of real queries (distinct, so nothing can be cached)."""
    return [
        orjson.dumps({"queries": [q.tolist()], "k": 10, "method": METHOD})
        for q in demo_queries(count)
    ]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Worker = Callable[[int, threading.Event, list[int]], None]


def http_worker(port: int, bodies: list[bytes]) -> Worker:
    """A client: one keep-alive connection, one-query searches back to back until ``stop``."""

    def run(index: int, stop: threading.Event, out: list[int]) -> None:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
        headers = {"Content-Type": "application/json"}
        done = 0
        try:
            while not stop.is_set():
                body = bodies[(index * 97 + done) % len(bodies)]
                connection.request("POST", "/search", body, headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"search answered {response.status}")
                done += 1
        finally:
            connection.close()
            out.append(done)

    return run


def engine_worker(search: Callable[[np.ndarray], object], queries: np.ndarray) -> Worker:
    """In-process: ``search`` of one query at a time until ``stop``."""

    def run(index: int, stop: threading.Event, out: list[int]) -> None:
        done = 0
        while not stop.is_set():
            row = (index * 97 + done) % len(queries)
            search(queries[row : row + 1])
            done += 1
        out.append(done)

    return run


def phase(worker: Worker, clients: int, seconds: float, pid: int) -> Phase:
    """``clients`` threads running ``worker`` for ``seconds``; queries/s and the CPU use of
    process ``pid`` (the server) and of this process (the clients)."""
    stop, counts = threading.Event(), []
    threads = [threading.Thread(target=worker, args=(i, stop, counts)) for i in range(clients)]
    server_cpu, client_cpu = _cpu_seconds(pid), time.process_time()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if len(counts) != clients:
        raise RuntimeError(f"{clients - len(counts)} client(s) failed; see the log above")
    return Phase(
        clients,
        sum(counts),
        elapsed,
        (_cpu_seconds(pid) - server_cpu) / elapsed,
        (time.process_time() - client_cpu) / elapsed,
    )


def compare(worker: Worker, seconds: float, rounds: int, pid: int) -> tuple[Phase, Phase]:
    """The best 1-client and 8-client phases of ``rounds`` alternating rounds."""
    phase(worker, CLIENTS, min(seconds, 1.0), pid)  # warm-up: threads, pools, caches
    best: dict[int, Phase] = {}
    for _ in range(rounds):
        for clients in (1, CLIENTS):
            got = phase(worker, clients, seconds, pid)
            if clients not in best or got.rate > best[clients].rate:
                best[clients] = got
    return best[1], best[CLIENTS]


def _describe(p: Phase, where: str = "server") -> str:
    client = f", client {p.client_cores:.2f}" if where == "server" else ""
    return (
        f"{p.clients} client{'s' if p.clients > 1 else ''}: {p.rate:,.0f} q/s "
        f"({where} {p.server_cores:.2f} cores{client})"
    )


def _row(name: str, one: Phase, many: Phase, detail: str, goal: float | None) -> Row:
    return Row(
        SECTION,
        f"{CLIENTS} clients / 1 client queries/s, batch 1, {name}",
        many.rate / one.rate,
        "×",
        goal,
        higher_is_better=True,
        detail=detail,
    )


def in_process(engine: Engine, seconds: float, rounds: int, size: str) -> list[Row]:
    """The same ratio without HTTP, threads calling ``Engine.search`` directly and through the
    coalescer of ``service/api/coalesce.py``: what sharing one gallery pass is worth."""
    queries = check_embeddings(demo_queries(256), field="queries")
    searches = {
        "in-process Engine.search": lambda q: engine.search(q, k=10, method=METHOD, invgc=True),
        "in-process, coalesced": lambda q: COALESCER.search(
            engine, q, k=10, method=METHOD, invgc=True
        ),
    }
    rows = []
    for name, search in searches.items():
        one, many = compare(engine_worker(search, queries), seconds, rounds, os.getpid())
        where = f"{METHOD}, {size}, threads as the Threads line says"
        detail = f"{_describe(one, 'process')}; {_describe(many, 'process')}; {where}"
        rows.append(_row(name, one, many, detail, None))
    return rows


def measure(quick: bool) -> list[Row]:
    seconds, rounds = (0.5, 1) if quick else (4.0, 2)
    bodies = _bodies(256)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
        workdir = Path(tmp)
        env = _gallery(workdir / "input", quick)
        size = "demo 300" if quick else f"{LARGE // 1000}k × 384 from real vectors"
        for index, (name, extra) in enumerate(THREAD_SETTINGS.items()):
            with Server(workdir / f"data-{index}", env | extra) as server:
                assert server.process is not None
                worker = http_worker(server.port, bodies)
                one, many = compare(worker, seconds, rounds, server.process.pid)
            detail = f"{_describe(one)}; {_describe(many)}; {METHOD}, {size}"
            rows.append(_row(name, one, many, detail, GOAL))
        rows += in_process(_engine(env, workdir / "data-0"), seconds, rounds, size)
    return rows
