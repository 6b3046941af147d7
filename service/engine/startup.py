"""Startup: load the files, precompute (or load from cache), replay durable changes.

Logs what it did and how long each step took. The result is a ready :class:`Engine`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from service.algorithms import Banks, InputError, check_embeddings, prepare_items
from service.algorithms.scan import scan_progress
from service.backends import backend_factory
from service.engine import cache
from service.engine.engine import Engine
from service.engine.loading import DataError, file_digest, load_embeddings, load_ids
from service.engine.persistence import GalleryStore
from service.settings import Settings

log = logging.getLogger(__name__)


def _checked(array: np.ndarray, path: Path, dim: int | None = None) -> np.ndarray:
    try:
        return check_embeddings(array, field=str(path), dim=dim)
    except InputError as exc:
        raise DataError(str(exc)) from None


class ProgressLog:
    """Logs the precompute's progress every ``step`` percent of the item-bank pairs to scan
    (a large gallery takes minutes; operators watch the log, and /readyz says 503 meanwhile)."""

    def __init__(self, total_pairs: int, step: int = 10) -> None:
        self.total, self.step, self.done = max(1, total_pairs), step, 0
        self.started = time.perf_counter()

    def __call__(self, pairs: int) -> None:
        before = 100 * self.done // self.total // self.step
        self.done += pairs
        percent = 100 * self.done // self.total
        if percent // self.step > before:
            elapsed = time.perf_counter() - self.started
            percent = min(percent, 100)
            log.info(
                "precompute %d%% done (%.1f s)",
                percent,
                elapsed,
                extra={"percent": percent, "seconds": round(elapsed, 1)},
            )


def load_engine(settings: Settings) -> Engine:
    """Build the engine the settings describe; raises DataError for unusable input files."""
    started = time.perf_counter()
    gallery_path, ids_path = settings.gallery_path(), settings.gallery_ids_path()
    bq_path, bg_path = settings.bank_paths()
    query_bank = _checked(load_embeddings(bq_path), bq_path)
    gallery_bank = _checked(load_embeddings(bg_path), bg_path, dim=query_bank.shape[1])
    banks = Banks(query_bank, gallery_bank)
    raw = load_embeddings(gallery_path)
    ids = tuple(load_ids(ids_path, raw.shape[0]))
    metadata: tuple[None, ...] = (None,) * len(ids)
    gallery_digest = file_digest(gallery_path, ids_path)

    store = GalleryStore(settings.data_dir / "galleries" / gallery_digest[:32])
    snapshot, changes = store.recover()
    if snapshot is not None:
        raw, ids, metadata = snapshot.embeddings, snapshot.ids, snapshot.metadata  # type: ignore[assignment]
        log.info("loaded gallery snapshot", extra={"seq": snapshot.seq, "size": len(ids)})
    gallery = _checked(raw, gallery_path, dim=banks.dim)
    loaded = time.perf_counter()

    norm = settings.norm_params()
    invgc = settings.invgc_params() if settings.invgc else None
    params = {"norm": asdict(norm), "invgc": asdict(invgc) if invgc else None}
    data_digest = file_digest(gallery_path, ids_path, bq_path, bg_path)
    key = cache.cache_key(f"{data_digest}:{snapshot.seq if snapshot else 0}", params)
    cache_dir = settings.data_dir / "cache"
    prepared = cache.load(cache_dir, key, banks, norm) if settings.cache else None
    from_cache = prepared is not None
    if prepared is None:
        pairs = gallery.shape[0] * sum(banks.sizes) * (2 if invgc else 1)
        with scan_progress(ProgressLog(pairs)):
            prepared = prepare_items(gallery, banks, norm, invgc)
        if settings.cache:
            cache.save(cache_dir, key, prepared, banks, norm)
    prepared_at = time.perf_counter()

    backend = backend_factory(settings.backend, **settings.backend_options())
    # every logged change made one version, so a snapshot of seq changes is version 1 + seq
    version = 1 + (snapshot.seq if snapshot else 0)
    engine = Engine.from_prepared(
        ids, metadata, prepared, banks, norm, invgc, backend, version=version
    )
    for change in changes:
        engine.apply(change, record=False)
    engine.attach_store(store)
    log.info(
        "engine ready",
        extra={
            "gallery": engine.state.size,
            "dim": banks.dim,
            "query_bank": banks.sizes[0],
            "gallery_bank": banks.sizes[1],
            "invgc": invgc.adjacency if invgc else "off",
            "precompute_cached": from_cache,
            "replayed_changes": len(changes),
            "load_seconds": round(loaded - started, 3),
            "precompute_seconds": round(prepared_at - loaded, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        },
    )
    return engine
