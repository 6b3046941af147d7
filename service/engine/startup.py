"""Startup: load the files, precompute (or load from cache), replay durable changes.

Logs what it did and how long each step took. The result is a ready :class:`Engine`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.algorithms import Banks, InputError, PreparedItems, check_embeddings, prepare_items
from service.algorithms.blocks import block_rows, row_blocks
from service.algorithms.scan import scan_progress
from service.backends import backend_factory
from service.engine import cache
from service.engine.changes import Change
from service.engine.engine import Engine
from service.engine.live_bank import LiveQueryBank
from service.engine.persistence import GalleryStore, Snapshot, StorageError
from service.engine.query_bank_store import FILE_NAME as QUERY_BANK_FILE
from service.engine.query_bank_store import QueryBankStore
from service.engine.state import GalleryState, Metadata
from service.io import DataError, file_digest, load_embeddings, load_ids
from service.settings import Settings

log = logging.getLogger(__name__)


def _checked(array: np.ndarray, path: Path, dim: int | None = None) -> np.ndarray:
    try:
        return check_embeddings(array, field=str(path), dim=dim)
    except InputError as exc:
        raise DataError(str(exc)) from None


def _normalised(raw: np.ndarray, path: Path, dim: int, storage: np.dtype) -> np.ndarray:
    """The file's rows (any float dtype) checked, normalised in float32 and held as
    ``storage``, block by block: a large gallery needs no full float32 copy."""
    if raw.dtype == storage == np.float32:
        return _checked(raw, path, dim=dim)
    _checked(raw[:1].astype(np.float32), path, dim=dim)  # an empty file, the dimension
    out = np.empty(raw.shape, storage)
    for rows in row_blocks(raw.shape[0], block_rows(raw.shape[1], 4, 16 << 20)):
        try:
            block = raw[rows].astype(np.float32, copy=False)
            out[rows] = check_embeddings(block, field=str(path))
        except InputError:  # say it with the file's row numbers (the block's are relative)
            _checked(raw.astype(np.float32), path, dim=dim)
            raise
    return out


def _return_freed_memory() -> None:
    """Hand the heap the startup freed (file parsing, the id list, temporaries) back to the
    OS: glibc keeps it otherwise, 20-30 MB at 1M items, counted in RSS for the process's
    lifetime. A no-op where the C library has no ``malloc_trim``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


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


def content_digest(embeddings: np.ndarray) -> str:
    """The gallery rows of a snapshot, for the precompute cache's key (with the banks'
    digest): a restart after ``POST /admin/snapshot`` finds the entry the snapshot wrote."""
    digest = hashlib.sha256()
    array = np.ascontiguousarray(embeddings)
    digest.update(str(array.shape).encode())
    # the bytes as stored, no copy: a float16 gallery hashes half the bytes (the storage dtype
    # is a separate part of the key)
    digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


@dataclass(frozen=True)
class OpenedStore:
    """A verified store and what it holds (``hubless serve`` opens it before listening, so a
    damaged store stops the process with one clear line). ``files_digest``: the gallery files'
    digest, which names the store and keys the precompute cache of a start from those files."""

    store: GalleryStore
    snapshot: Snapshot | None
    changes: list[Change]
    files_digest: str


def _files_digest(settings: Settings) -> str:
    return file_digest(settings.gallery_path(), settings.gallery_ids_path())


def store_directory(settings: Settings, files_digest: str | None = None) -> Path:
    """Where the store of the configured gallery lives (keyed by the gallery files' digest)."""
    digest = files_digest or _files_digest(settings)
    return settings.data_dir / "galleries" / digest[:32]


def open_store(settings: Settings) -> OpenedStore:
    """Open, migrate or create the gallery's store and verify it; raises StoreDamaged."""
    digest = _files_digest(settings)
    store = GalleryStore(
        store_directory(settings, digest),
        compact_changes=settings.compact_changes,
        compact_bytes=settings.compact_bytes,
    )
    snapshot, changes = store.recover()
    return OpenedStore(store, snapshot, changes, digest)


def _load_banks(bq_path: Path | None, bg_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(query bank, gallery bank) from their files, normalised; without a query-bank file (a
    live query bank's first start) the query bank is empty."""
    if bq_path is None:
        gallery_bank = _checked(load_embeddings(bg_path), bg_path)
        return np.empty((0, gallery_bank.shape[1]), gallery_bank.dtype), gallery_bank
    query_bank = _checked(load_embeddings(bq_path), bq_path)
    return query_bank, _checked(load_embeddings(bg_path), bg_path, dim=query_bank.shape[1])


def open_live_bank(settings: Settings, file_rows: np.ndarray) -> LiveQueryBank:
    """The live query bank: the bank file's rows and the served rows stored under data_dir."""
    return LiveQueryBank(
        file_rows,
        QueryBankStore(settings.data_dir / QUERY_BANK_FILE),
        capacity=settings.live_query_bank_size,
        max_pending=settings.live_query_bank_max_pending,
        seed=settings.live_query_bank_seed,
    )


def load_engine(settings: Settings, opened: OpenedStore | None = None) -> Engine:
    """Build the engine the settings describe; raises DataError for unusable input files and
    StoreDamaged for a store that fails its checks. ``opened``: the store, already opened.
    (``HUBLESS_BACKEND=milvus`` is served by the remote engine: :mod:`service.serving`.)"""
    started = time.perf_counter()
    gallery_path, ids_path = settings.gallery_path(), settings.gallery_ids_path()
    bq_path, bg_path = settings.bank_paths()
    query_file, gallery_bank = _load_banks(bq_path, bg_path)
    live = open_live_bank(settings, query_file) if settings.live_query_bank else None
    banks = Banks(live.rows() if live else query_file, gallery_bank)

    opened = opened or open_store(settings)
    store, snapshot, changes = opened.store, opened.snapshot, opened.changes
    storage = np.dtype(settings.storage_dtype)
    norm = settings.norm_params()
    invgc = settings.invgc_params() if settings.invgc else None
    screening = settings.hub_screening()
    params = {
        "norm": asdict(norm),
        "invgc": asdict(invgc) if invgc else None,
        "hub_topk": screening.k,
        "storage_dtype": settings.storage_dtype,
    }
    banks_digest = file_digest(bq_path, bg_path)
    if live is not None:  # the served rows are inputs of the precompute too
        banks_digest += hashlib.sha256(live.served.tobytes()).hexdigest()
    cache_dir = settings.data_dir / "cache"

    def cache_key(source_digest: str) -> str:
        return cache.cache_key(source_digest + banks_digest, params)

    def content_key(embeddings: np.ndarray) -> str:
        return cache_key(content_digest(embeddings))

    prepared = None
    if snapshot is not None:  # stored as served: used bit for bit, never re-normalised
        ids, metadata, gallery = snapshot.ids, snapshot.metadata, snapshot.embeddings
        if gallery.shape[1] != banks.dim and len(ids):
            raise DataError(f"{store.path}: snapshot of dimension {gallery.shape[1]}")
        # float32 rows of a float16 gallery: exact, so this cast restores the served values
        gallery = gallery.reshape(len(ids), banks.dim).astype(storage, copy=False)
        log.info("loaded gallery snapshot", extra={"seq": snapshot.seq, "size": len(ids)})
        key = content_key(gallery)
        if settings.cache:
            prepared = cache.load(cache_dir, key, banks, norm, gallery)
    else:  # keyed by the files' digest: a hit holds the file's rows as normalised, no re-read
        key = cache_key(f"files:{opened.files_digest}")
        if settings.cache:
            prepared = cache.load(cache_dir, key, banks, norm)
        if prepared is not None:
            gallery = prepared.original.embeddings
            ids = tuple(load_ids(ids_path, gallery.shape[0]))
        else:
            raw = load_embeddings(gallery_path, dtype=None)
            ids = tuple(load_ids(ids_path, raw.shape[0]))
            gallery = _normalised(raw, gallery_path, banks.dim, storage)
            del raw
        metadata = load_metadata(settings.gallery_metadata, ids)
    loaded = time.perf_counter()

    from_cache = prepared is not None
    if prepared is None:
        pairs = gallery.shape[0] * sum(banks.sizes) * (2 if invgc else 1)
        with scan_progress(ProgressLog(pairs)):
            prepared = prepare_items(gallery, banks, norm, invgc, hub_topk=screening.k)
        if settings.cache:
            cache.save(cache_dir, key, prepared, banks, norm)
    if settings.cache:
        cache.keep_only(cache_dir, key)
    prepared_at = time.perf_counter()

    backend = backend_factory(settings.backend, **settings.backend_options())
    # every logged change made one version, so a snapshot of seq changes is version 1 + seq
    version = 1 + (snapshot.seq if snapshot else 0)
    engine = Engine.from_prepared(
        ids,
        metadata,
        prepared,
        banks,
        norm,
        invgc,
        backend,
        version=version,
        screening=screening,
        dead_share=settings.dead_share,
    )
    for change in changes:
        engine.apply(change, record=False)

    def cache_snapshot(state: GalleryState) -> None:
        """The next start loads this snapshot: store its precompute (the served views) now."""
        if settings.cache:
            key = content_key(state.original.embeddings)
            views = PreparedItems(state.original, state.adjusted)
            cache.save(cache_dir, key, views, engine.banks, norm)
            cache.keep_only(cache_dir, key)  # the entries of older galleries: never loaded again

    engine.attach_store(store, on_compact=cache_snapshot)
    if store.due_for_compaction:  # a long log replayed now would be replayed at every start
        try:
            engine.compact()
        except StorageError as exc:  # the log still holds everything: serve, compact later
            log.warning("compaction at startup failed", extra={"error": str(exc)})
    engine.live_bank = live
    _return_freed_memory()
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
            "live_query_bank": live.status().as_dict() if live else None,
            "load_seconds": round(loaded - started, 3),
            "precompute_seconds": round(prepared_at - loaded, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        },
    )
    return engine
