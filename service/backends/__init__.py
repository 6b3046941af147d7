"""Search backends behind one interface, chosen by the ``backend`` setting."""

from __future__ import annotations

from collections.abc import Callable

from service.algorithms import GalleryView
from service.backends.base import SearchBackend
from service.backends.exact import ExactBackend

#: (view, ids of its rows, backend of the previous state or None) -> backend
BackendFactory = Callable[[GalleryView, tuple[str, ...], SearchBackend | None], SearchBackend]


def backend_factory(name: str, **options: str) -> BackendFactory:
    """The constructor of backend ``name`` ("exact" or "faiss"), with its options bound."""
    if name == "exact":
        return ExactBackend
    if name == "faiss":
        from service.backends.faiss import FaissBackend  # optional dependency

        return lambda view, ids, previous: FaissBackend(view, ids, previous, **options)
    raise ValueError(f"unknown backend {name!r}; expected 'exact' or 'faiss'")


__all__ = ["BackendFactory", "ExactBackend", "SearchBackend", "backend_factory"]
