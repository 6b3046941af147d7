"""Search cost: normalised methods against raw on one backend, and exact search against numpy.

Each query batch goes through what :meth:`Engine.plan` and the backend do for a request (the raw
top-1 pass for the dynamic methods, the plan, the backend's top-k), without the id mapping and
JSON that ``bench_http`` covers. Every ratio's two timings come from this one run.

Sizes (full run): gallery n = 100,000, d = 512 float32, k = 10, batches of 1 and 64 queries.
The banks only shape the stat columns, not the search cost, so they are 2 × 2,000 here (startup
with 50k banks is ``bench_precompute``'s subject).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.common import Row, best_time
from service.algorithms import (
    Banks,
    GalleryView,
    NormParams,
    prepare_items,
)
from service.backends import SearchBackend, backend_factory

SECTION = "search"
K = 10
METHODS = ("raw", "dualis", "dualdis")


def unit_rows(rng: np.random.Generator, n: int, d: int, chunk: int = 50_000) -> np.ndarray:
    """(n, d) float32 random unit rows, made in chunks (no float64 copy of the whole array)."""
    out = np.empty((n, d), np.float32)
    for start in range(0, n, chunk):
        part = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        out[start : start + part.shape[0]] = part
    return out


def synthetic_view(n: int, d: int, bank: int, seed: int = 0) -> GalleryView:
    """The InvGC-free view of a random gallery with two random banks (default NormParams)."""
    rng = np.random.default_rng(seed)
    banks = Banks(unit_rows(rng, bank, d), unit_rows(rng, bank, d))
    return prepare_items(unit_rows(rng, n, d), banks, NormParams(), None).original


def method_search(
    backend: SearchBackend, queries: np.ndarray, method: str, norm: NormParams, k: int = K
) -> tuple[np.ndarray, np.ndarray]:
    """What a request costs the backend: one call (top-1 pass, plan, top-k)."""
    hits = backend.search(queries, method, norm, k)
    return hits.rows, hits.scores


def numpy_topk(queries: np.ndarray, gallery: np.ndarray, k: int = K) -> np.ndarray:
    """The baseline: one ``Q @ Gᵀ`` and an ``argpartition`` (unsorted top k)."""
    return np.argpartition(-(queries @ gallery.T), k - 1, axis=1)[:, :k]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def interleaved_best(
    fns: dict[str, Callable[[], object]], quick: bool, rounds: int = 7, min_seconds: float = 0.3
) -> dict[str, float]:
    """Best seconds per call of each function, the functions taking turns round by round.

    On a shared machine load comes and goes; taking turns exposes every function of a ratio to
    the same spells of it, and the minimum over rounds keeps the quietest one.
    """
    if quick:
        rounds, min_seconds = 2, 0.01
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], best_time(fn, repeat=1, min_seconds=min_seconds))
    return best


def measure(quick: bool) -> list[Row]:
    n, d, bank = (5_000, 64, 500) if quick else (100_000, 512, 2_000)
    view = synthetic_view(n, d, bank)
    norm = NormParams()
    ids = tuple(map(str, range(n)))
    backends = {
        "exact": backend_factory("exact")(view, ids, None),
        "faiss flat": backend_factory("faiss", index="flat")(view, ids, None),
    }
    rng = np.random.default_rng(1)
    gallery = view.embeddings
    rows: list[Row] = []
    size = f"n={n:,}, d={d}, k={K}"
    for m in (1, 64):
        queries = unit_rows(rng, m, d)
        fns: dict[str, Callable[[], object]] = {"numpy": lambda q=queries: numpy_topk(q, gallery)}
        for name, backend in backends.items():
            for method in METHODS:
                fns[f"{name} {method}"] = lambda b=backend, mt=method, q=queries: method_search(
                    b, q, mt, norm
                )
        best = interleaved_best(fns, quick)
        for name in backends:
            t = {method: best[f"{name} {method}"] for method in METHODS}
            for method, goal in (("dualis", 1.05), ("dualdis", 2.1)):
                rows.append(
                    Row(
                        SECTION,
                        f"{method} / raw, {name}, batch {m}",
                        t[method] / t["raw"],
                        "×",
                        goal,
                        detail=f"raw {_ms(t['raw'])}, {method} {_ms(t[method])} ({size})",
                    )
                )
            if name == "exact":
                base = best["numpy"]
                rows.append(
                    Row(
                        SECTION,
                        f"exact raw throughput / numpy Q@Gᵀ+argpartition, batch {m}",
                        base / t["raw"],
                        "×",
                        0.8,
                        higher_is_better=True,
                        detail=(
                            f"numpy {_ms(base)}, exact {_ms(t['raw'])}; "
                            f"{m / t['raw']:,.0f} queries/s ({size})"
                        ),
                    )
                )
    return rows


__all__ = ["measure", "method_search", "numpy_topk", "synthetic_view", "unit_rows"]
