"""Diagnostics on Milvus: hubness of every method per view from the probes' top-k, and Δdeg on
a bounded sample of gallery items (each one's nearest other item is a Milvus search).

The k-occurrence vector over all n items (zeros included) is built for the duration of the
call only (8 bytes per item); nothing per item stays in the process. Retrieval quality with
``truth_ids`` needs every item's score against the truth item's: not offered here (400).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from service.algorithms import (
    METHODS,
    Degeneration,
    InputError,
    hubness,
    occurrence_histogram,
    top_hubs,
)
from service.engine.diagnostics import Diagnostics, Hub, MethodDiagnostics
from service.remote.engine import RemoteEngine, padded
from service.remote.store import INVGC, METADATA, ORIGINAL, SEQ, VECTOR


def diagnose_remote(
    engine: RemoteEngine,
    probes: np.ndarray,
    *,
    k: int,
    probe_source: str,
    degeneration_sample: int,
    truth_ids: list[str] | None = None,
    methods: tuple[str, ...] = METHODS,
    hub_limit: int = 10,
) -> Diagnostics:
    served = engine.served
    if served.size == 0:
        raise InputError("gallery", "the gallery is empty; there is nothing to diagnose")
    if truth_ids is not None:
        raise InputError("truth_ids", "retrieval quality is not computed with the milvus backend")
    views = [False] + ([True] if engine.invgc is not None else [])
    degen = {invgc: _degeneration(engine, invgc, degeneration_sample) for invgc in views}
    results = []
    for invgc in views:
        for method in methods:
            found = engine.search(probes, k=k, method=method, invgc=invgc)
            counts = Counter(i for row in found.ids for i in row)
            ids = list(counts)
            occurrence = np.zeros(served.size, np.int64)
            occurrence[: len(ids)] = list(counts.values())
            top = top_hubs(occurrence, hub_limit)
            shown = [ids[r] for r in top.rows.tolist() if r < len(ids)]
            meta = engine.store.get_rows(ORIGINAL, shown, [METADATA])
            hubs = [
                Hub(
                    ids[r],
                    int(c),
                    float(z),
                    meta.get(ids[r], {METADATA: {"v": None}})[METADATA]["v"],
                )
                for r, c, z in zip(top.rows.tolist(), top.occurrence, top.z, strict=True)
                if r < len(ids)
            ]
            results.append(
                MethodDiagnostics(
                    method,
                    invgc,
                    hubness(occurrence, k, probes.shape[0]),
                    None,
                    occurrence_histogram(occurrence),
                    top.scale,
                    hubs,
                )
            )
            del occurrence
    return Diagnostics(
        served.version, served.size, probe_source, engine.banks.sizes, degen, results
    )


def _degeneration(engine: RemoteEngine, invgc: bool, sample: int) -> Degeneration:
    """Δdeg over (up to) ``sample`` items: the mean similarity to their nearest other item in
    the whole gallery of the view (the sample: the first items in Milvus's order)."""
    served = engine.served
    view = INVGC if invgc else ORIGINAL
    if served.size < 2:
        return Degeneration(0.0, served.size, served.size)
    visible = f"{SEQ} <= {served.version}"
    rows = engine.store.query(view, visible, [VECTOR], limit=min(sample, served.size))
    items = np.array([r[VECTOR][: engine.dim] for r in rows], dtype=np.float32)
    found = engine.store.search(view, padded(items), 2, visible)
    nearest = [
        next(h.distance for h in hits if h.id != row["id"])
        for row, hits in zip(rows, found, strict=True)
    ]
    return Degeneration(float(np.mean(nearest)), len(rows), served.size)
