"""Hubness, degeneration and retrieval-quality metrics (docs/spec.md, "Hubness metrics").

Hubness is measured on k-occurrence ``N_k(g)``: how many probe queries have gallery item g in
their top-k, over **all** gallery items (zeros included). Each report carries its denominators
(k, number of probes, gallery size) so a figure is never shown without what it was computed on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from service.algorithms.blocks import block_rows, row_blocks, widened, work_dtype


def k_occurrence(topk_rows: np.ndarray, n: int) -> np.ndarray:
    """(n,) int64 k-occurrence from an (m, k) matrix of gallery rows (each probe's top-k)."""
    return np.bincount(topk_rows.ravel(), minlength=n).astype(np.int64)


def skewness(x: np.ndarray) -> float:
    """Sample skewness, Fisher, biased (scipy.stats.skew's default); 0 for a constant sample."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return 0.0
    centred = x - x.mean()
    m2 = np.mean(centred**2)
    if m2 <= 0:
        return 0.0
    return float(np.mean(centred**3) / m2**1.5)


def robin_hood(x: np.ndarray) -> float:
    """Share of occurrences to move to equalise: ``0.5 Σ|x − mean| / Σx`` (0 when Σx = 0)."""
    x = np.asarray(x, dtype=np.float64)
    total = x.sum()
    return float(0.5 * np.abs(x - x.mean()).sum() / total) if total > 0 else 0.0


def gini(x: np.ndarray) -> float:
    """Gini coefficient ``Σ_i Σ_j |x_i − x_j| / (2 n Σx)``, via the sorted form in O(n log n)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * total))


@dataclass(frozen=True)
class HubnessReport:
    """Hubness of one k-occurrence distribution, with its denominators.

    skewness, robin_hood, gini: over all ``gallery_size`` items. antihub_rate: share of gallery
    items never in a top-k. hub_occurrence: share of the ``probes·k`` top-k slots taken by hubs
    (items with N_k ≥ 2k). max_occurrence_ratio: max N_k / probes.
    """

    k: int
    probes: int
    gallery_size: int
    skewness: float
    robin_hood: float
    gini: float
    antihub_rate: float
    hub_occurrence: float
    max_occurrence_ratio: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def hubness(occurrence: np.ndarray, k: int, probes: int) -> HubnessReport:
    """All SPEC hubness metrics of a k-occurrence vector (n,) from ``probes`` queries."""
    n = occurrence.size
    slots = probes * k
    hubs = occurrence >= 2 * k
    return HubnessReport(
        k=k,
        probes=probes,
        gallery_size=n,
        skewness=skewness(occurrence),
        robin_hood=robin_hood(occurrence),
        gini=gini(occurrence),
        antihub_rate=float(np.mean(occurrence == 0)) if n else 0.0,
        hub_occurrence=float(occurrence[hubs].sum() / slots) if slots else 0.0,
        max_occurrence_ratio=float(occurrence.max() / probes) if probes and n else 0.0,
    )


def occurrence_histogram(occurrence: np.ndarray) -> tuple[list[int], list[int]]:
    """Log-binned k-occurrence: (edges, counts), bin i counts items with edges[i] ≤ N_k <
    edges[i+1]. Edges are 0 then powers of two up to the first one above max N_k, so zeros
    (anti-hubs) get a bin of their own and a hub of any size lands in a handful of bins."""
    occurrence = np.asarray(occurrence, dtype=np.int64)
    top = int(occurrence.max()) if occurrence.size else 0
    edges = [0, 1]
    while edges[-1] <= top:
        edges.append(2 * edges[-1])
    # np.histogram closes its last bin on the right; no value reaches the last edge, so no harm
    counts = np.histogram(occurrence, bins=edges)[0]
    return edges, [int(c) for c in counts]


#: 1.4826·MAD estimates the standard deviation of a normal sample (HubScan's robust z)
MAD_TO_SIGMA = 1.4826


def _histogram_median(levels: np.ndarray, counts: np.ndarray) -> float:
    """``np.median`` of a sample given as ascending ``levels`` each repeated ``counts`` times
    (the mean of the two middle values for an even count, as numpy computes it)."""
    ends = np.cumsum(counts)
    total = int(ends[-1])
    low, high = np.searchsorted(ends, [(total - 1) // 2, total // 2], side="right")
    return float(np.mean([levels[low], levels[high]]))


@dataclass(frozen=True)
class RobustScale:
    """Robust location and scale of a k-occurrence distribution (all items, zeros included).

    scale = 1.4826·MAD, or 1.0 when MAD is 0 (most items share one N_k, e.g. a small bank over
    a large gallery leaves most at 0): a hub's z is then its excess occurrence over the median,
    and z is always finite.
    """

    median: float
    mad: float
    scale: float

    @classmethod
    def of(cls, occurrence: np.ndarray) -> RobustScale:
        """Of counts (non-negative integers, the usual case) from their histogram: O(n + max),
        a few times faster than two float partitions of n values, which made the robust scale
        the costliest part of a one-item upsert at n = 100k (the hub screening runs it per
        change). Other values (or counts sparse beyond 4n): ``np.median`` twice. Both give the
        same floats."""
        values = np.asarray(occurrence)
        if values.size == 0:
            return cls(0.0, 0.0, 1.0)
        if values.dtype.kind in "iu" and values.min() >= 0 and values.max() < 4 * values.size:
            counts = np.bincount(values.ravel().astype(np.int64, copy=False))
            levels = np.arange(counts.size, dtype=np.float64)
            median = _histogram_median(levels, counts)
            deviation = np.abs(levels - median)
            order = np.argsort(deviation, kind="stable")
            mad = _histogram_median(deviation[order], counts[order])
        else:
            x = values.astype(np.float64)
            median = float(np.median(x))
            mad = float(np.median(np.abs(x - median)))
        return cls(median, mad, MAD_TO_SIGMA * mad if mad > 0 else 1.0)

    def z(self, occurrence: np.ndarray | int) -> np.ndarray:
        """Robust z-score ``(N_k − median) / scale`` of each value."""
        return (np.asarray(occurrence, dtype=np.float64) - self.median) / self.scale


@dataclass(frozen=True)
class TopHubs:
    """The ``rows`` with the largest k-occurrence (largest first, lower row first on ties),
    their N_k and robust z, and the scale the z-scores were computed with."""

    scale: RobustScale
    rows: np.ndarray
    occurrence: np.ndarray
    z: np.ndarray


def top_hubs(occurrence: np.ndarray, limit: int) -> TopHubs:
    """The ``limit`` items with the largest k-occurrence, with robust z against all items."""
    occurrence = np.asarray(occurrence, dtype=np.int64)
    scale = RobustScale.of(occurrence)
    rows = np.argsort(-occurrence, kind="stable")[: max(0, limit)]
    return TopHubs(scale, rows, occurrence[rows], scale.z(occurrence[rows]))


@dataclass(frozen=True)
class Degeneration:
    """Δdeg: mean over items of the similarity to their nearest *other* gallery item.

    items: how many gallery items the mean is over (all, or a seeded sample of them), each
    compared with the whole gallery of ``gallery_size``.
    """

    value: float
    items: int
    gallery_size: int


def degeneration(gallery: np.ndarray, *, sample: int | None = None, seed: int = 0) -> Degeneration:
    """Δdeg of a normalised gallery (n, d), blocked; ``sample`` limits the items averaged over
    (O(sample·n·d) instead of O(n²·d)) for large galleries."""
    n = gallery.shape[0]
    if n < 2:
        return Degeneration(0.0, n, n)
    rows = np.arange(n)
    if sample is not None and sample < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    nearest = np.empty(rows.size, np.float64)
    work = work_dtype(gallery.dtype)  # float16 storage: products in float32 blocks
    if work == gallery.dtype:
        columns = [slice(0, n)]
    else:
        columns = list(row_blocks(n, block_rows(gallery.shape[1], work.itemsize)))
    for sl in row_blocks(rows.size, block_rows(min(n, columns[0].stop), work.itemsize)):
        items = rows[sl]
        block = widened(gallery[items])
        best = np.full(items.size, -np.inf)
        for cols in columns:
            sims = block @ widened(gallery[cols]).T
            own = np.flatnonzero((items >= cols.start) & (items < cols.stop))
            sims[own, items[own] - cols.start] = -np.inf  # never the item itself
            best = np.maximum(best, sims.max(axis=1))
        nearest[sl] = best
    return Degeneration(float(nearest.mean()), int(rows.size), n)


@dataclass(frozen=True)
class RetrievalReport:
    """Retrieval quality from the 1-based rank of each query's true item."""

    queries: int
    r1: float
    r5: float
    r10: float
    median_rank: float
    mean_rank: float
    mrr: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def retrieval_quality(ranks: np.ndarray) -> RetrievalReport:
    """R@1/5/10, median and mean rank, MRR from (m,) 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("retrieval quality needs at least one ranked query")
    return RetrievalReport(
        queries=int(ranks.size),
        r1=float(np.mean(ranks <= 1)),
        r5=float(np.mean(ranks <= 5)),
        r10=float(np.mean(ranks <= 10)),
        median_rank=float(np.median(ranks)),
        mean_rank=float(ranks.mean()),
        mrr=float(np.mean(1.0 / ranks)),
    )
