"""Startup: load the files, precompute (or load from cache), replay durable changes.

Logs what it did and how long each step took. The result is a ready :class:`Engine`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from service.algorithms import Banks, InputError, PreparedItems, check_embeddings, prepare_items
from service.algorithms.scan import scan_progress
from service.backends import backend_factory
from service.engine import cache
from service.engine.engine import Engine
from service.engine.loading import DataError, file_digest, load_embeddings, load_ids
from service.engine.persistence import GalleryStore
from service.engine.state import GalleryState, Metadata
from service.settings import Settings

log = logging.getLogger(__name__)


def _checked(array: np.ndarray, path: Path, dim: int | None = None) -> np.ndarray:
    try:
        return check_embeddings(array, field=str(path), dim=dim)
    except InputError as exc:
        raise DataError(str(exc)) from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def load_metadata(path: Path | None, ids: tuple[str, ...]) -> tuple[Metadata, ...]:
    """Metadata per gallery row from JSON lines ``{"id": ..., ...}`` (the other keys are the
    item's metadata). Every line must name a gallery id, each at most once; rows without a line
    get None. A mistake is a DataError naming the file and line, never a half-loaded gallery."""
    if path is None:
        return (None,) * len(ids)
    rows = {item_id: row for row, item_id in enumerate(ids)}
    out: list[Metadata] = [None] * len(ids)
    seen: set[str] = set()
    unknown: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read gallery metadata ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:  # NaN/Infinity are not JSON: they could not be returned "as is" (PUT refuses them)
            record = json.loads(line, parse_constant=_no_constant)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise DataError(f'{path}:{number}: expected an object {{"id": "<gallery id>", ...}}')
        item_id = record.pop("id")
        if item_id in seen:
            raise DataError(f"{path}:{number}: id {item_id!r} appears twice")
        seen.add(item_id)
        if item_id not in rows:
            unknown.append(item_id)
            continue
        out[rows[item_id]] = record
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise DataError(f"{path}: {len(unknown)} id(s) not in the gallery: {shown}")
    return tuple(out)


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


def content_digest(embeddings: np.ndarray, banks_digest: str) -> str:
    """What a precompute depends on: the gallery rows as loaded (file or snapshot) and the
    banks. Keyed by content, a restart after ``POST /admin/snapshot`` finds the entry the
    snapshot wrote, and a gallery file that was rewritten with the same rows still hits."""
    digest = hashlib.sha256(banks_digest.encode())
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    digest.update(str(array.shape).encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


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
    metadata = load_metadata(settings.gallery_metadata, ids)
    gallery_digest = file_digest(gallery_path, ids_path)

    store = GalleryStore(settings.data_dir / "galleries" / gallery_digest[:32])
    snapshot, changes = store.recover()
    if snapshot is not None:
        raw, ids, metadata = snapshot.embeddings, snapshot.ids, snapshot.metadata
        log.info("loaded gallery snapshot", extra={"seq": snapshot.seq, "size": len(ids)})
    gallery = _checked(raw, gallery_path, dim=banks.dim)
    loaded = time.perf_counter()

    norm = settings.norm_params()
    invgc = settings.invgc_params() if settings.invgc else None
    params = {"norm": asdict(norm), "invgc": asdict(invgc) if invgc else None}
    banks_digest = file_digest(bq_path, bg_path)
    cache_dir = settings.data_dir / "cache"

    def cache_key(embeddings: np.ndarray) -> str:
        return cache.cache_key(content_digest(embeddings, banks_digest), params)

    key = cache_key(raw)
    prepared = cache.load(cache_dir, key, norm.dis_topk, banks.sizes) if settings.cache else None
    from_cache = prepared is not None
    if prepared is None:
        pairs = gallery.shape[0] * sum(banks.sizes) * (2 if invgc else 1)
        with scan_progress(ProgressLog(pairs)):
            prepared = prepare_items(gallery, banks, norm, invgc)
        if settings.cache:
            cache.save(cache_dir, key, prepared)
    prepared_at = time.perf_counter()

    def cache_snapshot(state: GalleryState) -> None:
        """The next start loads this snapshot: store its precompute (the served views) now."""
        if settings.cache:
            views = PreparedItems(state.original, state.adjusted)
            cache.save(cache_dir, cache_key(state.original.embeddings), views)

    backend = backend_factory(settings.backend, **settings.backend_options())
    # every logged change made one version, so a snapshot of seq changes is version 1 + seq
    version = 1 + (snapshot.seq if snapshot else 0)
    engine = Engine.from_prepared(
        ids, metadata, prepared, banks, norm, invgc, backend, version=version
    )
    for change in changes:
        engine.apply(change, record=False)
    engine.attach_store(store, on_compact=cache_snapshot)
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
