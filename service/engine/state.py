"""The served state: one immutable snapshot of the gallery and everything derived from it.

A change never edits a snapshot: the engine builds the next one off to the side and swaps a
single reference, so a search that holds a snapshot sees one consistent version from start to
end (copy-on-write).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from service.algorithms import GalleryView, InputError
from service.backends import BackendFactory, SearchBackend

Metadata = Mapping[str, Any] | None


@dataclass(frozen=True)
class GalleryState:
    """Version ``version`` of the gallery.

    ids / metadata: per row. original: the view of the gallery as given; adjusted: its
    InvGC-adjusted view (None when InvGC is off). backends: one per view, keyed by ``invgc``.
    """

    version: int
    ids: tuple[str, ...]
    metadata: tuple[Metadata, ...]
    original: GalleryView
    adjusted: GalleryView | None
    backends: Mapping[bool, SearchBackend]
    rows: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        rows = MappingProxyType({item_id: row for row, item_id in enumerate(self.ids)})
        object.__setattr__(self, "rows", rows)

    @classmethod
    def create(
        cls,
        version: int,
        ids: tuple[str, ...],
        metadata: tuple[Metadata, ...],
        original: GalleryView,
        adjusted: GalleryView | None,
        backend: BackendFactory,
        previous: GalleryState | None = None,
    ) -> GalleryState:
        """A state with a backend per view; ``previous`` lets backends apply a difference."""
        before = previous.backends if previous is not None else {}
        backends = {False: backend(original, ids, before.get(False))}
        if adjusted is not None:
            backends[True] = backend(adjusted, ids, before.get(True))
        return cls(version, ids, metadata, original, adjusted, MappingProxyType(backends))

    @property
    def size(self) -> int:
        return len(self.ids)

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
        unknown = [i for i in ids if i not in self.rows]
        if unknown:
            raise UnknownIdError(field_name, unknown)
        return np.fromiter((self.rows[i] for i in ids), np.int64, len(ids))


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
