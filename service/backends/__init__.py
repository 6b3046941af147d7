"""The single-node search backends behind one interface, chosen by the ``backend`` setting.

``HUBLESS_BACKEND=milvus`` is not one of them: Milvus is then the system of record, served by
:mod:`service.remote` (chosen in :mod:`service.serving`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.algorithms import GalleryView
from service.backends.base import BackendUnavailable, Hits, RawTop1, SearchBackend
from service.backends.exact import ExactBackend

#: (view, ids of its rows, backend of the previous state or None) -> backend
BackendFactory = Callable[[GalleryView, tuple[str, ...], SearchBackend | None], SearchBackend]

#: the backends :func:`backend_factory` builds (the engine holds the gallery in memory)
BACKENDS = ("exact", "faiss")


def backend_factory(name: str, **options: Any) -> BackendFactory:
    """The constructor of backend ``name`` (one of :data:`BACKENDS`), with its options bound.

    FAISS is imported only when chosen: the image of the exact backend does not need it.
    """
    if name == "exact":
        return ExactBackend
    if name != "faiss":
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    from service.backends.faiss import FaissBackend

    return lambda view, ids, previous: FaissBackend(view, ids, previous, **options)


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
