"""Search backends behind one interface, chosen by the ``backend`` setting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.algorithms import GalleryView
from service.backends.base import BackendUnavailable, Hits, RawTop1, SearchBackend
from service.backends.exact import ExactBackend

#: (view, ids of its rows, backend of the previous state or None) -> backend
BackendFactory = Callable[[GalleryView, tuple[str, ...], SearchBackend | None], SearchBackend]

BACKENDS = ("exact", "faiss", "milvus")


def backend_factory(name: str, **options: Any) -> BackendFactory:
    """The constructor of backend ``name`` (one of :data:`BACKENDS`), with its options bound.

    FAISS and Milvus are imported only when chosen: the image of the exact backend needs neither.
    """
    backend: Callable[..., SearchBackend]
    if name == "exact":
        return ExactBackend
    if name == "faiss":
        from service.backends.faiss import FaissBackend

        backend = FaissBackend
    elif name == "milvus":
        from service.backends.milvus import MilvusBackend

        backend = MilvusBackend
    else:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return lambda view, ids, previous: backend(view, ids, previous, **options)


__all__ = [
    "BACKENDS",
    "BackendFactory",
    "BackendUnavailable",
    "ExactBackend",
    "Hits",
    "RawTop1",
    "SearchBackend",
    "backend_factory",
]
