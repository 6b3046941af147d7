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
    degeneration,
    hubness,
    k_occurrence,
    ranks_of,
    retrieval_quality,
)
from service.engine.engine import Engine
from service.engine.state import GalleryState


@dataclass(frozen=True)
class MethodDiagnostics:
    method: str
    invgc: bool
    hubness: HubnessReport
    retrieval: RetrievalReport | None


@dataclass(frozen=True)
class Diagnostics:
    version: int
    gallery_size: int
    probe_source: str
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
) -> Diagnostics:
    """Hubness (and recall, with ``truth_ids``) of every method on every view, on one snapshot."""
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
            report = hubness(k_occurrence(rows, view.size), k, probes.shape[0])
            quality = None
            if truth is not None:
                quality = retrieval_quality(ranks_of(probes, view, plan, truth))
            results.append(MethodDiagnostics(method, invgc, report, quality))
    return Diagnostics(state.version, state.size, probe_source, degen, results)
