"""Approximate FAISS indexes (HNSW, IVF) against exact search: recall@10 per method, build and
search time.

Not part of the default full run (``python -m benchmarks.run --only ann``: about half an hour
on two shared cores, mostly index builds). Three parts:

- real: WordNet/e5 vectors (``var/datasets/wordnet-e5`` if built, else the bundled demo):
  gallery = test + val glosses + half the gallery bank (12,000 items), banks = the other half
  and the query bank, 1,000 real queries; HNSW at the recommended (default) settings and IVF,
  InvGC off and on.
- 100k: 100,000 items made from the real vectors (each a random real gallery vector plus
  Gaussian jitter of the same norm scale, re-normalised: clustered like real data, unlike
  uniform noise), real banks, real queries; HNSW at the defaults and IVF.
- 1M: the same construction at 1,000,000 items with 2 × 2,000 banks; IVF only (an HNSW build
  of 1M × 388 on two shared cores takes hours: see the measured 100k build rate).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import Row, best_time
from service.algorithms import (
    METHODS,
    Banks,
    GalleryView,
    InvGCParams,
    NormParams,
    check_embeddings,
    prepare_items,
)
from service.backends import ExactBackend, SearchBackend
from service.backends.faiss import FaissBackend, HnswSettings, IvfSettings

SECTION = "ann"
IN_DEFAULT_RUN = False  # --only ann (or --quick)
K = 10
ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "var" / "datasets" / "wordnet-e5", ROOT / "service" / "data" / "demo")
NORM = NormParams()


def _load(directory: Path, name: str) -> np.ndarray:
    return check_embeddings(np.load(directory / name).astype(np.float32), field=name)


def real_data(gallery_rows: int | None = None) -> tuple[np.ndarray, Banks, np.ndarray, str]:
    """(gallery, banks, queries, source name) from the largest real dataset available."""
    directory = next(d for d in SOURCES if (d / "gallery.npy").exists())
    bank = _load(directory, "gallery_bank.npy")
    half = bank.shape[0] // 2
    gallery = np.concatenate(
        [_load(directory, "gallery.npy"), _load(directory, "val_gallery.npy"), bank[:half]]
    )
    banks = Banks(_load(directory, "query_bank.npy"), bank[half:])
    queries = _load(directory, "queries.npy")[:1000]
    return gallery[:gallery_rows], banks, queries, directory.name


def jittered(base: np.ndarray, n: int, scale: float = 0.5, seed: int = 0) -> np.ndarray:
    """(n, d) unit rows: random rows of ``base`` plus Gaussian noise of norm ≈ ``scale``."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        noise = rng.standard_normal((stop - start, base.shape[1]), dtype=np.float32)
        noise *= np.float32(scale / np.sqrt(base.shape[1]))
        part = base[rng.integers(0, base.shape[0], stop - start)] + noise
        out[start:stop] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def top_rows(backend: SearchBackend, queries: np.ndarray, method: str) -> np.ndarray:
    """The top-K rows of ``method`` as the engine asks the backend (top-1 pass first)."""
    return backend.search(queries, method, NORM, K).rows


def recall(got: np.ndarray, want: np.ndarray) -> float:
    pairs = zip(got.tolist(), want.tolist(), strict=True)
    return sum(len(set(g) & set(w)) for g, w in pairs) / want.size


def _timed_build(build: Callable[[], SearchBackend]) -> tuple[SearchBackend, float]:
    started = time.perf_counter()
    backend = build()
    return backend, time.perf_counter() - started


def compare(
    label: str,
    view: GalleryView,
    queries: np.ndarray,
    indexes: dict[str, Callable[[GalleryView, tuple[str, ...]], SearchBackend]],
    quick: bool,
    variants: dict[str, Callable[[SearchBackend], None]] | None = None,
) -> list[Row]:
    """Recall@10 of each index for every method, build time, and batch-64 search time.
    ``variants``: search-time settings tried on each index as built (name suffix → a function
    that applies them), e.g. a sweep of HNSW's efSearch without a rebuild per value."""
    ids = tuple(map(str, range(view.size)))
    exact = ExactBackend(view, ids)
    truth = {method: top_rows(exact, queries, method) for method in METHODS}
    batch = queries[:64]
    timing = {"repeat": 2, "min_seconds": 0.05 if quick else 0.5}
    exact_time = best_time(lambda: top_rows(exact, batch, "dualis"), **timing)
    rows = []
    for name, make in indexes.items():
        backend, build = _timed_build(lambda make=make: make(view, ids))
        for suffix, apply in (variants or {"": lambda backend: None}).items():
            apply(backend)
            recalls = {
                method: recall(top_rows(backend, queries, method), truth[method])
                for method in METHODS
            }
            worst = min(recalls, key=recalls.get)
            rows.append(
                Row(
                    SECTION,
                    f"{name}{suffix} recall@10, worst method, {label}",
                    recalls[worst],
                    "",
                    0.95,
                    higher_is_better=True,
                    detail=", ".join(f"{m} {r:.3f}" for m, r in recalls.items()),
                )
            )
            search = best_time(lambda b=backend: top_rows(b, batch, "dualis"), **timing)
            rows.append(
                Row(
                    SECTION,
                    f"{name}{suffix} build and dualis batch-64 search, {label}",
                    build,
                    "s",
                    detail=(
                        f"build {build:.1f} s ({view.size / build:,.0f} items/s); search "
                        f"{search * 1e3:.3g} ms vs exact {exact_time * 1e3:.3g} ms "
                        f"({exact_time / search:.2g}× faster)"
                    ),
                )
            )
    return rows


def measure(quick: bool) -> list[Row]:
    hnsw = HnswSettings()
    indexes = {
        "HNSW (m=32, efC=200, ef=128)": lambda v, ids: FaissBackend(
            v, ids, index="hnsw", hnsw=hnsw
        ),
        "IVF (4√n lists, nprobe=128)": lambda v, ids: FaissBackend(
            v, ids, index="ivf", ivf=IvfSettings()
        ),
    }
    if quick:
        gallery, banks, queries, source = real_data(600)
        view = prepare_items(gallery, banks, NORM, None).original
        return compare(f"real {source} {view.size:,}", view, queries[:64], indexes, quick)

    gallery, banks, queries, source = real_data()
    rows: list[Row] = []
    prepared = prepare_items(gallery, banks, NORM, InvGCParams())
    for invgc, view in (("", prepared.original), (" InvGC", prepared.adjusted)):
        label = f"real {source} n={view.size:,}{invgc}"
        rows += compare(label, view, queries, indexes, quick)

    pool = np.concatenate([gallery, banks.query_bank])
    view = prepare_items(jittered(pool, 100_000), banks, NORM, None).original
    rows += compare("100k from real vectors", view, queries, indexes, quick)
    del view

    small = Banks(banks.query_bank[:2000], banks.gallery_bank[:2000])
    view = prepare_items(jittered(pool, 1_000_000, seed=1), small, NORM, None).original
    ivf_only = {k: v for k, v in indexes.items() if k.startswith("IVF")}
    rows += compare("1M from real vectors", view, queries[:200], ivf_only, quick)
    return rows
