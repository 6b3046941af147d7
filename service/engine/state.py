"""The served state: one immutable snapshot of the gallery and everything derived from it.

A change never edits a snapshot: the engine builds the next one off to the side and swaps a
single reference, so a search that holds a snapshot sees one consistent version from start to
end (copy-on-write).

Appending to a gallery of n items costs O(items added), not O(n) Python work: the id → row
index and the ids' object array are shared along a chain of appends (:class:`Catalog`), each
snapshot seeing only its first n rows. Deleting (or replacing) an item leaves its row in place,
dead (a tombstone: O(batch) plus a new (n,) bool live mask); a compaction drops the dead rows
later, off the request path (:meth:`~service.engine.Engine.compact_tombstones`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import compress
from types import MappingProxyType
from typing import Any

import numpy as np

from service.algorithms import GalleryView, InputError
from service.algorithms.views import GrowthBuffers, append_rows, keep_rows
from service.backends import BackendFactory, SearchBackend

Metadata = Mapping[str, Any] | None
#: no id moved since the row index was built
_NOT_MOVED: Mapping[str, int] = MappingProxyType({})


class RowIndex(Mapping[str, int]):
    """Read-only id → row of one snapshot: its first ``len(ids)`` rows of a shared table.

    ``table`` may hold entries for rows this snapshot does not have (later appends, or a change
    that failed), so a hit counts only if the row exists here, holds that very id and is live.
    ``moved``: this snapshot's own entries for ids whose row changed since the table was built
    (an item replaced, or deleted and inserted again, moves to a new row; the shared table keeps
    the first row, which older snapshots still use).
    """

    __slots__ = ("_ids", "_live", "_moved", "_table")

    def __init__(
        self,
        ids: np.ndarray,
        table: dict[str, int],
        live: np.ndarray | None = None,
        moved: Mapping[str, int] = _NOT_MOVED,
    ) -> None:
        self._ids, self._table, self._live, self._moved = ids, table, live, moved

    def get(self, key: object, default: Any = None) -> Any:
        row = self._moved.get(key)  # type: ignore[call-overload]
        if row is None:
            row = self._table.get(key)  # type: ignore[call-overload]
        if row is None or row >= len(self._ids) or self._ids[row] != key:
            return default
        if self._live is not None and not self._live[row]:
            return default
        return row

    def __getitem__(self, key: str) -> int:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        ids = self._ids.tolist()
        return iter(ids if self._live is None else compress(ids, self._live.tolist()))

    def __len__(self) -> int:
        return len(self._ids) if self._live is None else int(np.count_nonzero(self._live))


@dataclass(frozen=True)
class Catalog:
    """Who the rows are: ids and metadata per row (tuples, what backends get), the ids as a
    numpy object array (to map result rows to ids without a Python loop) and the id → row index.

    Rows of deleted or replaced items stay until a compaction, dead (``live`` (n,) bool False
    there; None when all rows are live): the index no longer maps their ids, and
    :attr:`live_ids` / :attr:`live_metadata` leave them out. The object array and the index are
    shared along a chain of appends (see :class:`~service.algorithms.views.GrowthBuffers`);
    every catalog is immutable to its readers.
    """

    ids: tuple[str, ...]
    metadata: tuple[Metadata, ...]
    id_array: np.ndarray
    rows: RowIndex
    growth: GrowthBuffers
    table: dict[str, int]
    live: np.ndarray | None = None
    moved: Mapping[str, int] = field(default_factory=lambda: _NOT_MOVED)

    @classmethod
    def create(cls, ids: Sequence[str], metadata: Sequence[Metadata]) -> Catalog:
        ids, metadata = tuple(ids), tuple(metadata)
        array = np.empty(len(ids), dtype=object)
        array[:] = ids
        return cls._fresh(ids, metadata, array, np.ones(len(ids), dtype=bool))

    @classmethod
    def _fresh(
        cls,
        ids: tuple[str, ...],
        metadata: tuple[Metadata, ...],
        array: np.ndarray,
        keep: np.ndarray,
    ) -> Catalog:
        """A new chain: the kept rows of ``array`` (whose ids are ``ids``) and a fresh index."""
        (id_array,), growth = keep_rows((array,), keep)
        table = dict(zip(ids, range(len(ids)), strict=True))
        return cls(ids, metadata, id_array, RowIndex(id_array, table), growth, table)

    @property
    def size(self) -> int:
        """Items in the gallery: the live rows."""
        return len(self.rows)

    @cached_property
    def live_ids(self) -> tuple[str, ...]:
        """The ids of the live rows, in row order (computed once per catalog: O(n))."""
        return self.ids if self.live is None else tuple(compress(self.ids, self.live.tolist()))

    @cached_property
    def live_metadata(self) -> tuple[Metadata, ...]:
        """The metadata of the live rows, in row order."""
        if self.live is None:
            return self.metadata
        return tuple(compress(self.metadata, self.live.tolist()))

    def append(self, ids: tuple[str, ...], metadata: tuple[Metadata, ...]) -> Catalog:
        """With new ids (none of them live) after the last row: amortised O(len(ids)) (plus
        the ids moved since the last compaction, when one of ``ids`` had a row before)."""
        n = len(self.ids)
        added = np.empty(len(ids), dtype=object)
        added[:] = ids
        (id_array,), growth = append_rows((self.id_array,), self.growth, (added,))
        # a reallocated buffer starts a new chain; a copied table keeps stale entries from a
        # failed change at worst, and RowIndex ignores those (their rows hold other ids)
        table = self.table if growth is self.growth else self.table.copy()
        rows = dict(zip(ids, range(n, n + len(ids)), strict=True))
        again = {i: r for i, r in rows.items() if i in table}  # had a row: the table keeps it
        moved = MappingProxyType({**self.moved, **again}) if again else self.moved
        table.update((i, r) for i, r in rows.items() if i not in again)
        live = self.live
        if live is not None:
            live = np.concatenate([live, np.ones(len(ids), dtype=bool)])
        return Catalog(
            self.ids + ids,
            self.metadata + metadata,
            id_array,
            RowIndex(id_array, table, live, moved),
            growth,
            table,
            live,
            moved,
        )

    def tombstone(self, rows: np.ndarray) -> Catalog:
        """With ``rows`` dead (their ids unmapped, the rows kept): O(n/8) for the new mask."""
        live = np.ones(len(self.ids), dtype=bool) if self.live is None else self.live.copy()
        live[rows] = False
        index = RowIndex(self.id_array, self.table, live, self.moved)
        return replace(self, rows=index, live=live)

    def keep(self, keep: np.ndarray) -> Catalog:
        """Without the rows where ``keep`` is False, nor the dead ones (rows renumbered: O(n))."""
        if self.live is not None:
            keep = keep & self.live
        flags = keep.tolist()
        ids = tuple(compress(self.ids, flags))
        metadata = tuple(compress(self.metadata, flags))
        return Catalog._fresh(ids, metadata, self.id_array, keep)


@dataclass(frozen=True)
class GalleryState:
    """Version ``version`` of the gallery.

    catalog: ids / metadata per row, and the id → row index. original: the view of the gallery
    as given; adjusted: its InvGC-adjusted view (None when InvGC is off). backends: one per
    view, keyed by ``invgc``. gallery_sum: (d,) float64 sum of the original embeddings, kept
    only for full-adjacency InvGC (whose every adjusted item depends on the gallery mean).

    Rows may be dead (tombstones, see :class:`Catalog`): ``rows`` maps live ids to their rows,
    the views and ``id_array`` / ``catalog`` are indexed by row (dead ones included), while
    ``ids``, ``metadata`` and ``size`` describe the gallery (live items only, in row order).
    """

    version: int
    catalog: Catalog
    original: GalleryView
    adjusted: GalleryView | None
    backends: Mapping[bool, SearchBackend]
    gallery_sum: np.ndarray | None = None

    @classmethod
    def create(
        cls,
        version: int,
        catalog: Catalog,
        original: GalleryView,
        adjusted: GalleryView | None,
        backend: BackendFactory,
        previous: GalleryState | None = None,
        gallery_sum: np.ndarray | None = None,
    ) -> GalleryState:
        """A state with a backend per view; ``previous`` lets backends apply a difference."""
        before = previous.backends if previous is not None else {}
        ids = catalog.ids
        backends = {False: backend(original, ids, before.get(False))}
        if adjusted is not None:
            backends[True] = backend(adjusted, ids, before.get(True))
        return cls(version, catalog, original, adjusted, MappingProxyType(backends), gallery_sum)

    @property
    def ids(self) -> tuple[str, ...]:
        """The gallery's ids, in row order (dead rows left out: not row-indexed)."""
        return self.catalog.live_ids

    @property
    def metadata(self) -> tuple[Metadata, ...]:
        """The gallery's metadata, as :attr:`ids` (row ``r``'s is ``catalog.metadata[r]``)."""
        return self.catalog.live_metadata

    @property
    def rows(self) -> Mapping[str, int]:
        return self.catalog.rows

    @property
    def id_array(self) -> np.ndarray:
        """(n,) object array of the ids: ``id_array[rows]`` maps search results to ids."""
        return self.catalog.id_array

    @property
    def size(self) -> int:
        """Items in the gallery (live rows)."""
        return self.catalog.size

    @property
    def row_count(self) -> int:
        """Rows in the arrays (live and dead): the next appended item's row."""
        return len(self.catalog.ids)

    @property
    def dead(self) -> int:
        """Dead rows (tombstones) waiting for a compaction."""
        return self.row_count - self.catalog.size

    def view(self, invgc: bool) -> GalleryView:
        if not invgc:
            return self.original
        if self.adjusted is None:
            raise InputError("invgc", "InvGC is not enabled on this service (HUBLESS_INVGC)")
        return self.adjusted

    def backend(self, invgc: bool) -> SearchBackend:
        self.view(invgc)  # same error when InvGC is off
        return self.backends[invgc]

    def rows_of(self, ids: list[str], field_name: str = "ids") -> np.ndarray:
        """Rows of known ids; InputError-like KeyError listing every unknown id."""
        found = [self.rows.get(i) for i in ids]
        if None in found:
            raise UnknownIdError(
                field_name, [i for i, r in zip(ids, found, strict=True) if r is None]
            )
        return np.array(found, dtype=np.int64)


class UnknownIdError(KeyError):
    """Ids that are not in the gallery (the HTTP layer maps this to 404)."""

    def __init__(self, field_name: str, ids: list[str]) -> None:
        shown = ", ".join(repr(i) for i in ids[:10]) + (" …" if len(ids) > 10 else "")
        super().__init__(f"{field_name}: unknown gallery id(s): {shown}")
        self.field = field_name
        self.ids = ids
        self.message = f"unknown gallery id(s): {shown}"

    def __str__(self) -> str:
        return str(self.args[0])
