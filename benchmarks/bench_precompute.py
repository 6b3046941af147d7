"""Startup precompute: ``prepare_items`` against the bare matrix products it cannot avoid.

Full run, two sizes (issue 16): gallery n = 20,000, banks 2 × 10,000, d = 256 and n = 100,000,
banks 2 × 50,000, d = 512, float32, default NormParams (DBSN's Sinkhorn solve included), each
twice: with the default settings (InvGC off) and with LocalAdj InvGC (pool_rate 0.01: K = 1% of
a bank). ``HUBLESS_BENCH_PRECOMPUTE_SIZES=20000x256x10000`` picks sizes (``n×d×bank``, comma
separated).

What the baseline counts: the dense products ``G·BQᵀ``, ``G·BGᵀ`` (the original view's stats
and LocalAdj's neighbours) and, with InvGC, ``G'·BQᵀ``, ``G'·BGᵀ`` (the adjusted view's stats),
each n × N × d multiply-adds, computed in the same 64 MiB row blocks into one reused buffer and
thrown away. Not counted (they are the precompute's own work): the per-row reductions
(log-mean-exp, top-k selections, DBSN's row stat), LocalAdj's sparse neighbour sums (n · K · d
per bank), the activation top-1 and DBSN's Sinkhorn solve (one |BG| × |BQ| product and its
log-sum-exps per iteration; the detail column gives its time).

Peak extra memory is tracemalloc's peak (numpy reports its buffers to it) during
``prepare_items``, above what was allocated before: the result (an adjusted copy of the gallery,
stats, activation lists) plus every transient block. CPU use / wall time shows whether BLAS
and the reduction threads kept the cores busy.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from benchmarks.bench_search import unit_rows
from benchmarks.common import Row
from service.algorithms import Banks, InvGCParams, NormParams, prepare_items
from service.algorithms.blocks import block_rows, row_blocks
from service.algorithms.scan import scan_progress
from service.algorithms.stats import dbsn_weights

SECTION = "precompute"
GIB = 1 << 30


def bare_products(galleries: list[np.ndarray], banks: Banks) -> None:
    """Every ``gallery · bankᵀ`` in scan_bank's row blocks, into one reused buffer."""
    for bank in (banks.query_bank, banks.gallery_bank):
        rows = block_rows(bank.shape[0], bank.dtype.itemsize)
        out = np.empty((rows, bank.shape[0]), bank.dtype)
        for gallery in galleries:
            for sl in row_blocks(gallery.shape[0], rows):
                np.matmul(gallery[sl], bank.T, out=out[: sl.stop - sl.start])


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


FULL_SIZES = ((20_000, 256, 10_000), (100_000, 512, 50_000))
QUICK_SIZES = ((3_000, 64, 1_500),)


def sizes(quick: bool) -> tuple[tuple[int, int, int], ...]:
    """(n, d, bank) of each run: the environment's choice, else the quick or full sizes."""
    chosen = os.environ.get("HUBLESS_BENCH_PRECOMPUTE_SIZES")
    if not chosen:
        return QUICK_SIZES if quick else FULL_SIZES
    parsed = [tuple(int(v) for v in size.split("x")) for size in chosen.split(",")]
    return tuple((n, d, bank) for n, d, bank in parsed)


def warm_kernels() -> None:
    """Load (or compile) the fused float32 kernels once, as the service's first precompute does:
    a per-process cost of about a second from numba's disk cache, not a per-item one."""
    rng = np.random.default_rng(0)
    banks = Banks(
        unit_rows(rng, 64, 8).astype(np.float32), unit_rows(rng, 64, 8).astype(np.float32)
    )
    prepare_items(unit_rows(rng, 32, 8), banks, NormParams(), InvGCParams())


def measure(quick: bool) -> list[Row]:
    wall, _ = timed(warm_kernels)
    rows = [
        Row(
            SECTION,
            "fused kernels loaded before the timings (once per process)",
            wall,
            "s",
            detail="numba's on-disk cache; a cold compile takes 5-15 s (docs/performance.md)",
        )
    ]
    for n, d, bank in sizes(quick):
        rows += measure_size(n, d, bank)
    return rows


def measure_size(n: int, d: int, bank: int) -> list[Row]:
    rng = np.random.default_rng(0)
    banks = Banks(unit_rows(rng, bank, d), unit_rows(rng, bank, d))
    gallery = unit_rows(rng, n, d)
    norm = NormParams()
    size = f"n={n:,}, banks 2×{bank:,}, d={d}"
    solve, _ = timed(lambda: dbsn_weights(banks.query_bank, banks.gallery_bank, norm))
    # the default settings first (InvGC off: the original view's two products)
    wall0, cpu0 = timed(lambda: prepare_items(gallery, banks, norm, None))
    base0, base_cpu0 = min(timed(lambda: bare_products([gallery], banks)) for _ in range(2))
    rows = [
        Row(
            SECTION,
            f"prepare_items, defaults (DBSN T={norm.dbsn_iterations}, InvGC off) / its 2 products",
            wall0 / base0,
            "×",
            1.5,
            detail=(
                f"prepare {wall0:.1f} s (Sinkhorn solve alone {solve:.1f} s), "
                f"2 blocked products {base0:.1f} s; {size}"
            ),
        ),
        Row(
            SECTION,
            "the same, in CPU seconds (load-robust cross-check: a busy machine stretches wall "
            "time, not the work)",
            cpu0 / base_cpu0,
            "×",
            detail=f"prepare {cpu0:.1f} CPU s, 2 blocked products {base_cpu0:.1f} CPU s; {size}",
        ),
    ]
    return rows + _measure_invgc(gallery, banks, norm, size)


def _measure_invgc(gallery: np.ndarray, banks: Banks, norm: NormParams, size: str) -> list[Row]:
    """prepare_items with LocalAdj InvGC (four products), its memory, CPU use and progress."""
    n, d = gallery.shape
    bank = banks.sizes[0]
    invgc = InvGCParams()
    reported = [0]
    result = {}

    def prepare() -> None:
        with scan_progress(lambda pairs: reported.__setitem__(0, reported[0] + pairs)):
            result["prepared"] = prepare_items(gallery, banks, norm, invgc)

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        wall, cpu = timed(prepare)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    adjusted = result["prepared"].adjusted.embeddings
    # the same product work on the same arrays, twice around nothing else (the quieter counts)
    base = min(timed(lambda: bare_products([gallery, adjusted], banks))[0] for _ in range(2))
    expected = 2 * n * 2 * bank
    cores = os.cpu_count() or 1
    return [
        Row(
            SECTION,
            "prepare_items (LocalAdj InvGC) / its 4 products",
            wall / base,
            "×",
            1.5,
            detail=(
                f"prepare {wall:.1f} s, 4 blocked products {base:.1f} s "
                f"({4 * n * bank * d / base / 1e9:.0f} G multiply-adds/s); {size}"
            ),
        ),
        Row(
            SECTION,
            "peak extra memory of prepare_items",
            peak / GIB,
            "GiB",
            1.0,
            detail=(
                f"tracemalloc peak {peak / 2**20:,.0f} MiB, of which the adjusted gallery "
                f"{adjusted.nbytes / 2**20:,.0f} MiB is kept; a full n×N block would be "
                f"{n * bank * 4 / 2**20:,.0f} MiB; {size}"
            ),
        ),
        Row(
            SECTION,
            "CPU use during prepare_items",
            cpu / wall,
            "cores",
            detail=f"of {cores} cores ({cpu:.1f} CPU s in {wall:.1f} s wall); {size}",
        ),
        Row(
            SECTION,
            "progress reported / pairs scanned",
            reported[0] / expected,
            "×",
            1.0,
            higher_is_better=True,
            detail=f"{reported[0]:,} of {expected:,} item-bank pairs via scan_progress",
        ),
    ]
