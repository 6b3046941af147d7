"""1M × 384 on one machine (issue 16): float16 storage, memory, cached restart, and exact, FAISS
IVF and FAISS HNSW search at 1M.

Not part of the default full run (``python -m benchmarks.run --only scale``; the HNSW build
alone takes about 20 min on two shared cores). The gallery is bench_ann's "1M from real
vectors" (each item a random real vector plus Gaussian jitter, re-normalised), stored in
float16; banks 2 × 2,000 real vectors (as bench_ann at 1M), 200 real queries. Parts
(``HUBLESS_BENCH_SCALE_PARTS``, default all, space separated):

- ``service``: a child process loads the engine from files with ``HUBLESS_STORAGE_DTYPE=
  float16`` (cold: precompute and cache), then again (cached restart); its resident memory
  against the float16 data plus the banks, and the restart time.
- ``exact``: exact search latency at batch 1 and 64, float16 and float32 storage (banks
  2 × 100: a search costs the same whatever the bank sizes).
- ``ivf``, ``hnsw``: recall@10 of every method against exact, build time, batch-64 latency
  (bench_ann's ``compare``).

``HUBLESS_BENCH_SCALE_EF`` lists HNSW search beams to sweep on the one built index (default
128). ``HUBLESS_BENCH_SCALE_N`` changes the size (default 1,000,000), ``HUBLESS_BENCH_SCALE_BANK``
the rows taken from each bank (default 2,000; the precompute at 1M costs n × their sum).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.bench_ann import NORM, ROOT, K, compare, jittered, real_data, top_rows
from benchmarks.common import Row, best_time, table
from service.algorithms import Banks, GalleryView, prepare_items
from service.backends import ExactBackend, SearchBackend
from service.backends.faiss import FaissBackend, HnswSettings, IvfSettings

SECTION = "scale"
IN_DEFAULT_RUN = False  # --only scale (or --quick)
PARTS = ("service", "exact", "ivf", "hnsw")
QUERIES = 200


def size(quick: bool) -> int:
    return 5_000 if quick else int(os.environ.get("HUBLESS_BENCH_SCALE_N", 1_000_000))


def parts() -> tuple[str, ...]:
    chosen = tuple(os.environ.get("HUBLESS_BENCH_SCALE_PARTS", " ".join(PARTS)).split())
    unknown = set(chosen) - set(PARTS)
    if unknown:
        raise ValueError(f"HUBLESS_BENCH_SCALE_PARTS: unknown {sorted(unknown)}; have {PARTS}")
    return chosen


def dataset(n: int) -> tuple[np.ndarray, Banks, np.ndarray]:
    """(float16 gallery (n, d), banks 2 × ≤ ``HUBLESS_BENCH_SCALE_BANK`` (default 2,000),
    ``QUERIES`` real queries)."""
    gallery, banks, queries, _ = real_data()
    pool = np.concatenate([gallery, banks.query_bank])
    rows = int(os.environ.get("HUBLESS_BENCH_SCALE_BANK", 2000))
    small = Banks(banks.query_bank[:rows], banks.gallery_bank[:rows])
    return jittered(pool, n, seed=1).astype(np.float16), small, queries[:QUERIES]


#: A child process: load the engine the environment describes, search once, report.
_CHILD = """
import json, resource, sys, time
import numpy as np
started = time.perf_counter()
from service.engine.startup import load_engine
from service.settings import Settings
imported = time.perf_counter()
engine = load_engine(Settings())
loaded = time.perf_counter()
engine.search(np.load(sys.argv[1]), k=10, method="dbsn", invgc=False)
usage = resource.getrusage(resource.RUSAGE_SELF)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
kib = lambda name: int(status[name].split()[0]) * 1024
print(json.dumps({
    "import_s": imported - started, "load_s": loaded - imported, "rss": kib("VmRSS"),
    "peak": kib("VmHWM"), "dtype": str(engine.state.original.embeddings.dtype),
    "cpu_s": usage.ru_utime + usage.ru_stime,
}))
"""


def _start(env: dict[str, str], queries: Path) -> dict[str, float]:
    """One service start (a fresh interpreter): seconds to import and to load, memory."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(queries)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"service start failed: {done.stderr[-2000:]}")
    return {**json.loads(done.stdout.splitlines()[-1]), "wall_s": time.perf_counter() - started}


def service_rows(gallery: np.ndarray, banks: Banks, queries: np.ndarray, label: str) -> list[Row]:
    """Resident memory of a float16 service against its float16 data plus banks (goal 1.5×),
    and its restart time from the precompute cache (goal 30 s): files written as an operator
    would (float16 gallery, float32 banks), each start a fresh process."""
    (ROOT / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "var", prefix="bench-scale-") as tmp:
        files = Path(tmp)
        arrays = {
            "gallery": gallery,
            "query_bank": banks.query_bank,
            "gallery_bank": banks.gallery_bank,
            "queries": queries[:64],
        }
        for name, array in arrays.items():
            np.save(files / f"{name}.npy", array)
        env = {
            **os.environ,
            "HUBLESS_GALLERY": str(files / "gallery.npy"),
            "HUBLESS_QUERY_BANK": str(files / "query_bank.npy"),
            "HUBLESS_GALLERY_BANK": str(files / "gallery_bank.npy"),
            "HUBLESS_DATA_DIR": str(files / "var"),
            "HUBLESS_STORAGE_DTYPE": "float16",
            "HUBLESS_LOG_LEVEL": "WARNING",
        }
        cold = _start(env, files / "queries.npy")
        warm = _start(env, files / "queries.npy")
    data = gallery.nbytes + banks.query_bank.nbytes + banks.gallery_bank.nbytes
    gib = 2.0**30
    return [
        Row(
            SECTION,
            f"service RSS / (float16 gallery + banks), {label}",
            warm["rss"] / data,
            "×",
            1.5,
            detail=(
                f"RSS {warm['rss'] / gib:.2f} GiB after a cached start and a batch-64 dbsn "
                f"search (cold start {cold['rss'] / gib:.2f} GiB); data {data / gib:.2f} GiB; "
                f"peak during start {warm['peak'] / gib:.2f} GiB cached, "
                f"{cold['peak'] / gib:.2f} GiB cold; stored {warm['dtype']}"
            ),
        ),
        Row(
            SECTION,
            f"cached restart (process start to engine ready), {label}",
            warm["import_s"] + warm["load_s"],
            "s",
            30.0,
            detail=(
                f"imports {warm['import_s']:.1f} s + load {warm['load_s']:.1f} s; the process's "
                f"CPU time {warm['cpu_s']:.1f} s (with a batch-64 search); load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (cold start: precompute and "
                f"cache write {cold['load_s']:.1f} s, CPU {cold['cpu_s']:.1f} s)"
            ),
        ),
    ]


def exact_rows(view: GalleryView, queries: np.ndarray, label: str, quick: bool) -> list[Row]:
    """Exact search latency (raw and dualis) at batch 1 and 64."""
    exact = ExactBackend(view, tuple(map(str, range(view.size))))
    timing = {"repeat": 2 if quick else 3, "min_seconds": 0.05 if quick else 1.0}
    rows = []
    for batch in (1, 64):
        times = {
            m: best_time(lambda m=m, b=batch: top_rows(exact, queries[:b], m), **timing)
            for m in ("raw", "dualis")
        }
        rows.append(
            Row(
                SECTION,
                f"exact dualis top-{K} latency, batch {batch}, {label}",
                times["dualis"] * 1e3,
                "ms",
                detail=f"raw {times['raw'] * 1e3:.3g} ms; {batch / times['dualis']:,.0f} queries/s",
            )
        )
    return rows


def _progress(rows: list[Row]) -> list[Row]:
    """Print each part's rows as it ends (a long run that fails later keeps them)."""
    print(table(rows), file=sys.stderr, flush=True)
    return rows


def measure(quick: bool) -> list[Row]:
    chosen = parts()
    n = size(quick)
    gallery, banks, queries = dataset(n)
    label = f"{n:,} × {gallery.shape[1]} float16"
    rows: list[Row] = []
    if "service" in chosen:
        rows += _progress(service_rows(gallery, banks, queries, label))
    if not {"exact", "ivf", "hnsw"} & set(chosen):
        return rows
    if "exact" in chosen:  # a search's cost does not depend on the bank sizes (only the
        # stats' values do): 2 × 100 bank rows spare this part the 1M × 3,000 precompute
        tiny = Banks(banks.query_bank[:100], banks.gallery_bank[:100])
        for dtype in (np.float16, np.float32):
            stored = gallery.astype(dtype, copy=False)
            tiny_view = prepare_items(stored, tiny, NORM, None).original
            found = exact_rows(tiny_view, queries, label.replace("float16", dtype.__name__), quick)
            rows += _progress(found)
            del stored, tiny_view
    if not {"ivf", "hnsw"} & set(chosen):
        return rows
    view = prepare_items(gallery, banks, NORM, None).original
    del gallery  # the view holds the same float16 rows
    indexes = {
        "ivf": ("IVF (4√n lists, nprobe=128)", {"index": "ivf", "ivf": IvfSettings()}),
        "hnsw": ("HNSW (m=32, efC=200", {"index": "hnsw", "hnsw": HnswSettings()}),
    }
    variants = {"ivf": None, "hnsw": {f", ef={ef})": _ef_search(ef) for ef in ef_sweep()}}
    for part in ("ivf", "hnsw"):  # one at a time: the IVF rows survive a failed HNSW build
        if part in chosen:
            name, options = indexes[part]
            make = {name: lambda v, ids, o=options: FaissBackend(v, ids, **o)}
            found = compare(label, view, queries, make, quick, variants[part])
            rows += _progress([replace(row, section=SECTION) for row in found])
    return rows


def ef_sweep() -> tuple[int, ...]:
    """HNSW's search beams to try on the one built index (``HUBLESS_BENCH_SCALE_EF``, space
    separated; default the service's)."""
    chosen = os.environ.get("HUBLESS_BENCH_SCALE_EF", str(HnswSettings().ef_search))
    return tuple(int(ef) for ef in chosen.split())


def _ef_search(ef: int) -> Callable[[SearchBackend], None]:
    def apply(backend: SearchBackend) -> None:
        assert isinstance(backend, FaissBackend)
        backend.hnsw = replace(backend.hnsw, ef_search=ef)  # a search-time setting

    return apply


if __name__ == "__main__":  # one part alone, e.g. the long HNSW build in the background
    print(table(measure("--quick" in sys.argv)), flush=True)
