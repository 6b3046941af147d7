"""Diagnostics of the served gallery: hubness per method and view, degeneration, recall.

Probes are the query bank (a sample of it) unless the caller brings its own queries. Note that
probing with the query bank flatters the query-bank methods (IS, DIS, DualIS...), whose
statistics were computed on those very probes; ``POST /diagnostics`` with held-out queries
gives the unbiased figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.algorithms import (
    METHODS,
    Degeneration,
    HubnessReport,
    InputError,
    RetrievalReport,
    RobustScale,
    degeneration,
    hubness,
    k_occurrence,
    occurrence_histogram,
    ranks_of,
    retrieval_quality,
    top_hubs,
)
from service.engine.engine import Engine
from service.engine.state import GalleryState, Metadata


@dataclass(frozen=True)
class Hub:
    """One gallery item with a large k-occurrence, resolved on the diagnosed snapshot."""

    id: str
    occurrence: int
    z: float
    metadata: Metadata


@dataclass(frozen=True)
class MethodDiagnostics:
    method: str
    invgc: bool
    hubness: HubnessReport
    retrieval: RetrievalReport | None
    histogram: tuple[list[int], list[int]]  # (edges, counts), see occurrence_histogram
    hub_scale: RobustScale
    hubs: list[Hub]  # largest k-occurrence first

    @property
    def max_z(self) -> float:
        """Robust z of the largest k-occurrence (0 for an empty list)."""
        return self.hubs[0].z if self.hubs else 0.0


@dataclass(frozen=True)
class Diagnostics:
    version: int
    gallery_size: int
    probe_source: str
    bank_sizes: tuple[int, int]  # (|BQ|, |BG|)
    degeneration: dict[bool, Degeneration]  # keyed by invgc
    methods: list[MethodDiagnostics]


def probe_sample(bank: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    if bank.shape[0] <= limit:
        return bank
    rows = np.sort(np.random.default_rng(seed).choice(bank.shape[0], limit, replace=False))
    return bank[rows]


def diagnose(
    engine: Engine,
    probes: np.ndarray,
    *,
    k: int,
    probe_source: str,
    degeneration_sample: int,
    truth_ids: list[str] | None = None,
    methods: tuple[str, ...] = METHODS,
    hub_limit: int = 10,
) -> Diagnostics:
    """Hubness (and recall, with ``truth_ids``) of every method on every view, on one snapshot,
    with the ``hub_limit`` items of largest k-occurrence per method and view (the remote
    engine of the milvus backend: :func:`service.remote.diagnostics.diagnose_remote`)."""
    if not isinstance(engine, Engine):
        from service.remote.diagnostics import diagnose_remote

        return diagnose_remote(
            engine,
            probes,
            k=k,
            probe_source=probe_source,
            degeneration_sample=degeneration_sample,
            truth_ids=truth_ids,
            methods=methods,
            hub_limit=hub_limit,
        )
    state: GalleryState = engine.state
    if state.size == 0:
        raise InputError("gallery", "the gallery is empty; there is nothing to diagnose")
    truth = state.rows_of(truth_ids, "truth_ids") if truth_ids is not None else None
    views = [False] + ([True] if state.adjusted is not None else [])
    degen = {
        invgc: degeneration(state.view(invgc).embeddings, sample=degeneration_sample)
        for invgc in views
    }
    results = []
    for invgc in views:
        view = state.view(invgc)
        for method in methods:
            backend, plan = engine.plan(state, probes, method, invgc)
            rows, _ = backend.search(probes, plan, k)
            occurrence = k_occurrence(rows, view.size)
            report = hubness(occurrence, k, probes.shape[0])
            quality = None
            if truth is not None:
                quality = retrieval_quality(ranks_of(probes, view, plan, truth))
            top = top_hubs(occurrence, hub_limit)
            hubs = [
                Hub(state.ids[row], int(count), float(z), state.metadata[row])
                for row, count, z in zip(top.rows, top.occurrence, top.z, strict=True)
            ]
            histogram = occurrence_histogram(occurrence)
            results.append(
                MethodDiagnostics(method, invgc, report, quality, histogram, top.scale, hubs)
            )
    return Diagnostics(state.version, state.size, probe_source, engine.banks.sizes, degen, results)
