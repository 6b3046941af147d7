"""Sharded bulk load of a big gallery into the remote store: independent workers, then a merge.

An item's rows (``[g, stat(g)]`` and, with LocalAdj InvGC, ``[g', stat'(g)]``) depend only on
the item and the banks, so shard workers need nothing from each other. The one global part is
the *bank-side state*: each bank item's top-k gallery items, per view and bank (the DIS
activation sets and hub screening's k-occurrence derive from it). It is a reduce:

1. ``load_shard`` (worker I of N) reads its contiguous slice of the memory-mapped gallery one
   chunk at a time (:func:`~service.export.chunked.prepared_chunks`, bounded memory), writes
   each chunk's rows to the sink (``upsert_rows``, tagged with the load's version) and saves
   its *partial* bank-side state (top-k over its slice: global rows, similarities and the ids
   of the rows it names) to ``<state-dir>/shard-I-of-N.npz``, written last and atomically;
2. ``merge_shards`` checks the N partials belong to one load (same settings, banks and gallery;
   their slices tile the gallery), merges them exactly (:meth:`BankTopK.merge` in row order:
   ties keep the lower row, as one worker over the whole gallery would) and writes the
   bank-side state and the version/size (``put_bank_state``, ``set_version``).

Shards are ranges of *global* chunks (chunk c is rows ``c·chunk_rows …``), so every chunk is
computed exactly as one worker over the whole gallery computes it: the rows and the merged
state are bit-identical to a one-worker load, whatever N. A rerun of a shard rewrites the same
rows (upsert by id) and the same partial: workers are restartable. Full-adjacency InvGC couples
every item to the gallery mean and is refused (the remote store serves LocalAdj only).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.algorithms import Banks, BankTopK, InvGCParams, NormParams, PreparedItems
from service.algorithms.augment import view_coordinates
from service.export.chunked import (
    DEFAULT_CHUNK_ROWS,
    MappedGallery,
    chunk_slices,
    prepared_chunks,
)
from service.export.writers import LineSource
from service.remote.engine import bank_widths
from service.remote.store import GALLERY, INVGC, ORIGINAL, QUERY

PARTIAL_FORMAT = "hubless-bulk-partial/1"
_SHARD = re.compile(r"^(\d+)/(\d+)$")


class BulkError(ValueError):
    """A load cannot go on; the message is one line naming what and why."""


class BulkSink(Protocol):
    """Where a load writes: the three write methods of
    :class:`~service.remote.store.RemoteStore`."""

    def upsert_rows(
        self, view: str, ids: list[str], coords: np.ndarray, metadata: list[Any], seq: int
    ) -> None:
        """Rows ``ids[i] -> coords[i]`` ((n, d+5) float32) with their metadata (JSON or None),
        written by version ``seq``."""

    def put_bank_state(
        self, view: str, bank: str, ids_matrix: np.ndarray, sims_matrix: np.ndarray, seq: int
    ) -> None:
        """Each bank item's top-k gallery ids ((N, k) object, None where the gallery has fewer
        than k items) and similarities ((N, k) float32, −inf there), written by version
        ``seq``."""

    def set_version(self, version: int, size: int) -> None:
        """Commit: the gallery is ``size`` items at ``version``."""


class MemorySink:
    """A :class:`BulkSink` in memory (for tests): the last write of each id wins."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[np.ndarray, Any, int]]] = {}
        self.bank_state: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.version: tuple[int, int] | None = None
        self.upserts = 0

    def upsert_rows(
        self, view: str, ids: list[str], coords: np.ndarray, metadata: list[Any], seq: int
    ) -> None:
        stored = self.rows.setdefault(view, {})
        for i, row, meta in zip(ids, coords, metadata, strict=True):
            stored[i] = (row.copy(), meta, seq)
        self.upserts += 1

    def put_bank_state(
        self, view: str, bank: str, ids_matrix: np.ndarray, sims_matrix: np.ndarray, seq: int
    ) -> None:
        self.bank_state[(view, bank)] = (ids_matrix.copy(), sims_matrix.copy())

    def set_version(self, version: int, size: int) -> None:
        self.version = (version, size)


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` (0-based, as Kubernetes' ``JOB_COMPLETION_INDEX``)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = _SHARD.match(text.strip())
        if match is None:
            raise BulkError(f"--shard expects I/N (worker I of N, 0 <= I < N), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if not 0 <= index < count:
            raise BulkError(f"--shard {text}: need 0 <= I < N")
        return cls(index, count)

    def chunks(self, total: int) -> range:
        """This worker's contiguous range of the ``total`` global chunks."""
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)

    @property
    def file_name(self) -> str:
        return partial_name(self.index, self.count)


def partial_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.npz"


@dataclass(frozen=True)
class BulkJob:
    """What every worker and the merge must agree on: gallery, banks, parameters, chunk grid.

    ``hub_k``: width of the original view's query-bank top-k (hub screening's k-occurrence);
    every other top-k is ``norm.dis_topk`` wide, as :func:`~service.algorithms.prepare_items`
    keeps them.
    """

    gallery: MappedGallery
    banks: Banks
    norm: NormParams
    invgc: InvGCParams | None
    hub_k: int
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    threads: int = 1

    def __post_init__(self) -> None:
        if self.invgc is not None and self.invgc.adjacency == "full":
            raise BulkError(
                "full-adjacency InvGC couples every item to the gallery mean: the remote store "
                "serves LocalAdj only (HUBLESS_INVGC_ADJACENCY=local)"
            )
        if self.gallery.shape[1] != self.banks.dim:
            raise BulkError(
                f"gallery: dimension {self.gallery.shape[1]}, the banks have {self.banks.dim}"
            )
        if self.chunk_rows < 1 or self.threads < 1:
            raise BulkError("--chunk-rows and --threads must be >= 1")

    @property
    def size(self) -> int:
        return self.gallery.shape[0]

    @property
    def views(self) -> tuple[str, ...]:
        return (ORIGINAL,) if self.invgc is None else (ORIGINAL, INVGC)

    def widths(self) -> dict[tuple[str, str], int]:
        """k of each (view, bank) top-k state: what the remote engine keeps."""
        return bank_widths(self.views, self.norm, self.hub_k)

    def fingerprint(self) -> str:
        """SHA-256 of everything a row or a top-k depends on (not of the chunk grid, which
        changes only float bits, nor of the gallery's bytes: its shape and dtype stand in)."""
        digest = hashlib.sha256()
        described = {
            "norm": asdict(self.norm),
            "invgc": asdict(self.invgc) if self.invgc is not None else None,
            "hub_k": self.hub_k,
            "gallery": [list(self.gallery.shape), str(self.gallery.array.dtype)],
        }
        digest.update(json.dumps(described, sort_keys=True).encode())
        for bank in (self.banks.query_bank, self.banks.gallery_bank):
            digest.update(np.ascontiguousarray(bank, np.float32).tobytes())
        return digest.hexdigest()

    def slices(self, shard: Shard) -> list[slice]:
        every = chunk_slices(self.size, self.chunk_rows)
        return [every[c] for c in shard.chunks(len(every))]

    def empty_tops(self) -> dict[tuple[str, str], BankTopK]:
        sizes = {QUERY: self.banks.sizes[0], GALLERY: self.banks.sizes[1]}
        return {
            (view, bank): BankTopK(
                np.empty((sizes[bank], 0), np.int64), np.empty((sizes[bank], 0), np.float32), k
            )
            for (view, bank), k in self.widths().items()
        }


def _views(prepared: PreparedItems) -> Iterator[tuple[str, Any]]:
    yield ORIGINAL, prepared.original
    if prepared.adjusted is not None:
        yield INVGC, prepared.adjusted


def parse_metadata(lines: list[str], first_row: int) -> list[Any]:
    """JSON lines to values (an empty line is None); errors name the gallery row. NaN and
    Infinity are refused, as the API refuses them (they could not be returned as JSON)."""
    out = []
    for row, line in enumerate(lines, start=first_row):
        try:
            out.append(json.loads(line, parse_constant=_no_constant) if line.strip() else None)
        except ValueError as exc:
            raise BulkError(f"metadata of gallery row {row}: not JSON ({exc})") from None
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_shard(
    job: BulkJob,
    shard: Shard,
    ids: LineSource,
    metadata: LineSource | None,
    sink: BulkSink,
    state_dir: Path,
    version: int,
) -> dict[str, Any]:
    """Worker ``shard``: write its slice's rows to ``sink`` and its partial bank-side state to
    ``state_dir``; returns a summary (rows, seconds, rows per second)."""
    started = time.perf_counter()
    slices = job.slices(shard)
    start = slices[0].start if slices else 0
    stop = slices[-1].stop if slices else 0
    ids.skip(start)
    if metadata is not None:
        metadata.skip(start)
    tops = job.empty_tops()
    writing = 0.0
    for sl, prepared in prepared_chunks(
        job.gallery, slices, job.banks, job.norm, job.invgc, job.threads, hub_topk=job.hub_k
    ):
        rows = sl.stop - sl.start
        chunk_ids = ids.take(rows)
        meta = parse_metadata(metadata.take(rows), sl.start) if metadata else [None] * rows
        for view, prepared_view in _views(prepared):
            coords = view_coordinates(prepared_view)
            before = time.perf_counter()
            sink.upsert_rows(view, chunk_ids, coords, meta, version)
            writing += time.perf_counter() - before
            for bank, own in (
                (QUERY, prepared_view.query_top),
                (GALLERY, prepared_view.gallery_top),
            ):
                tops[(view, bank)] = tops[(view, bank)].merge(own, sl.start)
    computed = time.perf_counter() - started
    meta_out = {
        "format": PARTIAL_FORMAT,
        "shard": shard.index,
        "shards": shard.count,
        "start": start,
        "stop": stop,
        "rows": job.size,
        "version": version,
        "fingerprint": job.fingerprint(),
        "chunk_rows": job.chunk_rows,
    }
    path = save_partial(state_dir / shard.file_name, meta_out, tops, ids)
    seconds = time.perf_counter() - started
    return {
        "shard": f"{shard.index}/{shard.count}",
        "rows": stop - start,
        "first_row": start,
        "views": list(job.views),
        "partial_state": str(path),
        "seconds": round(seconds, 3),
        "writing_seconds": round(writing, 3),  # of which waiting for the sink
        "rows_per_second": round((stop - start) / max(computed, 1e-9), 1),
    }


def save_partial(
    path: Path, meta: dict[str, Any], tops: dict[tuple[str, str], BankTopK], ids: LineSource
) -> Path:
    """The partial state as ``.npz`` via a temporary file and a rename (never half a file):
    global rows and similarities per (view, bank), and the ids of every row they name."""
    arrays: dict[str, np.ndarray] = {}
    for (view, bank), top in tops.items():
        arrays[f"{view}.{bank}.idx"] = top.idx
        arrays[f"{view}.{bank}.sim"] = top.sim
    named = np.unique(
        np.concatenate([np.empty(0, np.int64), *(t.idx.ravel() for t in tops.values())])
    )
    meta = {**meta, "named_ids": ids.at(named)}  # JSON keeps any id exactly
    arrays["named_rows"] = named
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("wb") as out:
        out.write(buffer.getvalue())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Partial:
    """One worker's saved state."""

    meta: dict[str, Any]
    tops: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    named_rows: np.ndarray

    @classmethod
    def load(cls, path: Path, keys: list[tuple[str, str]]) -> Partial:
        try:
            with np.load(path, allow_pickle=False) as archive:
                meta = json.loads(str(archive["meta"]))
                tops = {(v, b): (archive[f"{v}.{b}.idx"], archive[f"{v}.{b}.sim"]) for v, b in keys}
                named = archive["named_rows"]
        except (OSError, ValueError, KeyError) as exc:
            raise BulkError(f"{path}: not a partial state of this load ({exc})") from None
        if meta.get("format") != PARTIAL_FORMAT:
            raise BulkError(f"{path}: not a partial state ({meta.get('format')!r})")
        return cls(meta, tops, named)


@dataclass(frozen=True)
class MergedState:
    """The whole gallery's bank-side state, ready to commit: per (view, bank) each bank item's
    top-k ids ((N, k) object, None padding) and similarities ((N, k) float32, −inf padding)."""

    tops: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    version: int
    size: int

    def commit(self, sink: BulkSink) -> dict[str, Any]:
        """Bank-side state first, then the version (readers see the load only when complete);
        returns a summary."""
        started = time.perf_counter()
        for (view, bank), (ids, sims) in self.tops.items():
            sink.put_bank_state(view, bank, ids, sims, seq=self.version)
        sink.set_version(self.version, self.size)
        return {
            "rows": self.size,
            "version": self.version,
            "views": sorted({view for view, _ in self.tops}),
            "commit_seconds": round(time.perf_counter() - started, 3),
        }


def merged_state(job: BulkJob, count: int, state_dir: Path, version: int) -> MergedState:
    """Reduce the ``count`` partial states in ``state_dir`` (nothing is written)."""
    partials = _read_partials(job, count, state_dir, version)
    tops = job.empty_tops()
    for part in partials:  # in row order: ties keep the lower row, as one worker would
        for key, (idx, sim) in part.tops.items():
            tops[key] = tops[key].merge(BankTopK(idx, sim, tops[key].k), 0)
    id_of = _id_lookup(partials)
    out = {}
    for key, top in tops.items():
        ids = np.full((top.idx.shape[0], top.k), None, dtype=object)
        sims = np.full((top.idx.shape[0], top.k), -np.inf, np.float32)
        width = top.idx.shape[1]
        ids[:, :width] = id_of(top.idx)
        sims[:, :width] = top.sim
        out[key] = (ids, sims)
    return MergedState(out, version, job.size)


def merge_shards(
    job: BulkJob, count: int, sink: BulkSink, state_dir: Path, version: int
) -> dict[str, Any]:
    """:func:`merged_state`, then commit it to ``sink``."""
    return merged_state(job, count, state_dir, version).commit(sink)


def _read_partials(job: BulkJob, count: int, state_dir: Path, version: int) -> list[Partial]:
    if count < 1:
        raise BulkError(f"--merge N needs N >= 1, got {count}")
    paths = [state_dir / partial_name(i, count) for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise BulkError(
            f"{state_dir}: no partial state of shard(s) {shown} of {count}: run them first"
        )
    keys = list(job.widths())
    partials = [Partial.load(p, keys) for p in paths]
    fingerprint, at = job.fingerprint(), 0
    for path, part in zip(paths, partials, strict=True):
        meta = part.meta
        if meta["fingerprint"] != fingerprint or meta["rows"] != job.size:
            raise BulkError(f"{path}: loaded with other settings, banks or gallery than this merge")
        if meta["version"] != version:
            raise BulkError(f"{path}: rows written as version {meta['version']}, not {version}")
        if meta["start"] != at and meta["stop"] > meta["start"]:
            raise BulkError(f"{path}: covers rows {meta['start']}…, expected {at}… (chunk grid?)")
        at = max(at, meta["stop"])
    if at != job.size:
        raise BulkError(f"{state_dir}: the shards cover rows 0…{at - 1} of {job.size}")
    return partials


def _id_lookup(partials: list[Partial]) -> Any:
    """A vectorised map from global rows (any shape) to the ids the partials saved for them."""
    rows = np.concatenate([np.empty(0, np.int64), *(p.named_rows for p in partials)])
    names = np.array([i for p in partials for i in p.meta["named_ids"]], dtype=object)
    order = np.argsort(rows, kind="stable")
    rows, names = rows[order], names[order]

    def lookup(idx: np.ndarray) -> np.ndarray:
        return names[np.searchsorted(rows, idx)] if idx.size else np.empty(idx.shape, object)

    return lookup
