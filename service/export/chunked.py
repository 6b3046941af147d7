"""The augmented gallery of a huge gallery, in parallel chunks and bounded memory.

An item's stat columns (and, with LocalAdj, its InvGC adjustment) depend only on the item and
the banks, so chunks are independent and :func:`~service.algorithms.prepare_items` on a chunk
gives exactly that chunk's rows of the whole gallery. Two things are global:

- the DIS/DualDIS activation sets: each bank item's top-k over the *whole* gallery. Each chunk
  returns its own :class:`~service.algorithms.BankTopK`; :class:`ActivationSets` merges them
  with ``BankTopK.merge(batch, first_row)`` (O(N·k) per chunk);
- full-adjacency InvGC's gallery mean: computed first, in its own streaming pass
  (:func:`gallery_mean`).

The gallery is read from a memory-mapped ``.npy`` (float16/32/64), one chunk at a time,
converted to float32 and normalised per chunk; pages of a consumed chunk are released
(``MADV_DONTNEED``) so the resident set stays bounded by the chunks in flight, not the file.
Chunks run on a thread pool (BLAS, ``argpartition`` and ``exp`` release the GIL) with at most
``2 × workers`` chunks in flight, and come back in order.
"""

from __future__ import annotations

import mmap
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from service.algorithms import (
    Banks,
    BankTopK,
    InputError,
    InvGCParams,
    NormParams,
    PreparedItems,
    check_embeddings,
    prepare_items,
)
from service.algorithms.augment import view_coordinates

T = TypeVar("T")
DEFAULT_CHUNK_ROWS = 32768
#: the largest page-cache folio a file mapping may map at once (x86-64 PMD size, 2 MiB)
LARGEST_FOLIO = 2**21
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class MappedGallery:
    """A 2-D ``.npy`` gallery memory-mapped read-only (``.npz`` is loaded whole: no mmap).

    ``rows(sl)`` copies a slice out as float32 (normalised later); ``release(sl)`` drops the
    slice's pages from this process's resident set (the OS page cache keeps them if it can).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self._offset = 0
        if path.suffix == ".npy":
            with path.open("rb") as handle:
                read_header = _HEADER_READERS.get(np.lib.format.read_magic(handle))
                if read_header is not None:
                    shape, fortran, dtype = read_header(handle)
                    self._offset = handle.tell()
                    if not fortran and len(shape) == 2 and shape[0] > 0:
                        self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            if self._map is not None:
                self.array = np.ndarray(shape, dtype, buffer=self._map, offset=self._offset)
            else:  # other layouts: numpy's own memmap, without page release
                self.array = np.load(path, mmap_mode="r")
        else:
            from service.io import load_embeddings

            self.array = load_embeddings(path)
        if self.array.ndim != 2 or not np.issubdtype(self.array.dtype, np.floating):
            raise InputError(str(path), f"expected a 2-D float array, got {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    def rows(self, sl: slice) -> np.ndarray:
        """Rows ``sl``, validated and L2-normalised, float32 (row numbers in errors are global)."""
        try:
            return check_embeddings(np.asarray(self.array[sl], dtype=np.float32), field="gallery")
        except InputError as exc:
            raise InputError(f"gallery rows {sl.start}…{sl.stop - 1}", exc.message) from None

    def release(self, sl: slice) -> None:
        """Unmap the slice's pages, and those of the :data:`LARGEST_FOLIO` before it: reading
        the next rows maps the whole large page-cache folio they lie in (Linux 6.x fault-around),
        which reaches back into rows released already (measured: 10 MB left mapped after 400k
        × 64 float16 rows without the margin, none with it). Unmapping rows another thread still
        reads is safe: it faults them back in."""
        if self._map is None:
            return
        row_bytes = self.array.shape[1] * self.array.dtype.itemsize
        page = mmap.PAGESIZE
        start = max(0, (self._offset + sl.start * row_bytes) // page * page - LARGEST_FOLIO)
        stop = self._offset + sl.stop * row_bytes
        self._map.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def close(self) -> None:
        if self._map is not None:
            self.array = np.empty((0, self.array.shape[1]), self.array.dtype)
            self._map.close()
            self._map = None


@dataclass(frozen=True)
class AugmentedChunk:
    """Rows ``start … start+len-1`` of the exported view: ``coords`` (b, d+5) float32 and each
    bank's top-k within the chunk (rows numbered from 0 within the chunk)."""

    start: int
    coords: np.ndarray
    query_top: BankTopK
    gallery_top: BankTopK

    @property
    def stop(self) -> int:
        return self.start + self.coords.shape[0]


class ActivationSets:
    """Each bank's top-k over every chunk merged so far; chunks may arrive in any order."""

    def __init__(self, banks: Banks, k: int) -> None:
        def empty(size: int) -> BankTopK:
            return BankTopK(np.empty((size, 0), np.int64), np.empty((size, 0), np.float32), k)

        self.query_top = empty(banks.sizes[0])
        self.gallery_top = empty(banks.sizes[1])

    def add(self, chunk: AugmentedChunk) -> None:
        self.query_top = self.query_top.merge(chunk.query_top, chunk.start)
        self.gallery_top = self.gallery_top.merge(chunk.gallery_top, chunk.start)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted gallery rows in A_BQ and in A_BG."""
        return np.unique(self.query_top.idx), np.unique(self.gallery_top.idx)


def chunk_slices(n: int, chunk_rows: int) -> list[slice]:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return [slice(s, min(n, s + chunk_rows)) for s in range(0, n, chunk_rows)]


def ordered_map(
    func: Callable[[slice], T], slices: list[slice], workers: int
) -> Iterator[tuple[slice, T]]:
    """``func`` over ``slices`` on a thread pool, yielded in order, at most 2·workers in flight
    (what bounds memory: each in-flight chunk holds its inputs and outputs)."""
    if workers <= 1:
        for sl in slices:
            yield sl, func(sl)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="export") as pool:
        pending: deque[tuple[slice, Future[T]]] = deque()
        todo = iter(slices)
        try:
            for sl in todo:
                pending.append((sl, pool.submit(func, sl)))
                if len(pending) >= 2 * workers:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def gallery_mean(
    gallery: MappedGallery, chunk_rows: int = DEFAULT_CHUNK_ROWS, workers: int = 1
) -> np.ndarray:
    """(d,) float64 mean of the normalised gallery rows: full-adjacency InvGC's only coupling."""
    n, d = gallery.shape

    def chunk_sum(sl: slice) -> np.ndarray:
        rows = gallery.rows(sl)
        gallery.release(sl)
        return rows.sum(axis=0, dtype=np.float64)

    total = np.zeros(d, np.float64)
    for _, part in ordered_map(chunk_sum, chunk_slices(n, chunk_rows), workers):
        total += part
    return total / n


@dataclass(frozen=True)
class ExportJob:
    """What to compute: the gallery, the banks, the parameters and which view to export."""

    gallery: MappedGallery
    banks: Banks
    norm: NormParams
    invgc: InvGCParams | None  # None: export the original view
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    workers: int = os.cpu_count() or 1

    @property
    def view(self) -> str:
        return "original" if self.invgc is None else "invgc"

    def chunks(self) -> Iterator[AugmentedChunk]:
        """Every chunk of the exported view, in row order."""
        n = self.gallery.shape[0]
        mean = None
        if self.invgc is not None and self.invgc.adjacency == "full":
            mean = gallery_mean(self.gallery, self.chunk_rows, self.workers).astype(np.float32)
        slices = chunk_slices(n, self.chunk_rows)
        for sl, prepared in prepared_chunks(
            self.gallery, slices, self.banks, self.norm, self.invgc, self.workers, mean=mean
        ):
            view = prepared.original if prepared.adjusted is None else prepared.adjusted
            yield AugmentedChunk(sl.start, view_coordinates(view), view.query_top, view.gallery_top)


def prepared_chunks(
    gallery: MappedGallery,
    slices: list[slice],
    banks: Banks,
    norm: NormParams,
    invgc: InvGCParams | None,
    workers: int,
    *,
    mean: np.ndarray | None = None,
    hub_topk: int = 0,
) -> Iterator[tuple[slice, PreparedItems]]:
    """:func:`~service.algorithms.prepare_items` of each slice of ``gallery``, in order, on
    ``workers`` threads; each slice's pages are released once read (the bounded-memory loop
    shared by the export and the sharded bulk load)."""

    def prepare(sl: slice) -> PreparedItems:
        rows = gallery.rows(sl)
        gallery.release(sl)
        return prepare_items(rows, banks, norm, invgc, gallery_mean=mean, hub_topk=hub_topk)

    yield from ordered_map(prepare, slices, workers)
