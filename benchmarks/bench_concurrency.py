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

    python -m benchmarks.run --only concurrency           # 50k × 384 from real vectors, ~1 min
    python -m benchmarks.run --only concurrency --quick   # 300 demo items: a smoke test
"""

from __future__ import annotations

import http.client
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from benchmarks.bench_ann import jittered
from benchmarks.common import Row
from benchmarks.load_test import LOOPBACK, Server, demo_queries, write_gallery
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


def _client(port: int, bodies: list[bytes], offset: int, stop: threading.Event, out: list[int]):
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    headers = {"Content-Type": "application/json"}
    done = 0
    try:
        while not stop.is_set():
            connection.request("POST", "/search", bodies[(offset + done) % len(bodies)], headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"search answered {response.status}")
            done += 1
    finally:
        connection.close()
        out.append(done)


def phase(server: Server, bodies: list[bytes], clients: int, seconds: float) -> Phase:
    """``clients`` threads searching back to back for ``seconds``; queries/s and CPU use."""
    assert server.process is not None
    pid = server.process.pid
    stop, counts = threading.Event(), []
    threads = [
        threading.Thread(target=_client, args=(server.port, bodies, i * 97, stop, counts))
        for i in range(clients)
    ]
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


def compare(
    server: Server, bodies: list[bytes], seconds: float, rounds: int
) -> tuple[Phase, Phase]:
    """The best 1-client and 8-client phases of ``rounds`` alternating rounds."""
    phase(server, bodies, CLIENTS, min(seconds, 1.0))  # warm-up: threads, pools, caches
    best: dict[int, Phase] = {}
    for _ in range(rounds):
        for clients in (1, CLIENTS):
            got = phase(server, bodies, clients, seconds)
            if clients not in best or got.rate > best[clients].rate:
                best[clients] = got
    return best[1], best[CLIENTS]


def _describe(p: Phase) -> str:
    return (
        f"{p.clients} client{'s' if p.clients > 1 else ''}: {p.rate:,.0f} q/s "
        f"(server {p.server_cores:.2f} cores, client {p.client_cores:.2f})"
    )


def measure(quick: bool) -> list[Row]:
    seconds, rounds = (0.5, 1) if quick else (4.0, 2)
    bodies = _bodies(256)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
        workdir = Path(tmp)
        env = _gallery(workdir / "input", quick)
        size = "demo 300" if quick else f"{LARGE // 1000}k × 384 from real vectors"
        for name, extra in THREAD_SETTINGS.items():
            with Server(workdir / f"data-{len(rows)}", env | extra) as server:
                one, many = compare(server, bodies, seconds, rounds)
            rows.append(
                Row(
                    SECTION,
                    f"{CLIENTS} clients / 1 client queries/s, batch 1, {name}",
                    many.rate / one.rate,
                    "×",
                    GOAL,
                    higher_is_better=True,
                    detail=f"{_describe(one)}; {_describe(many)}; {METHOD}, {size}",
                )
            )
    return rows
