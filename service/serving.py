"""Which engine serves, chosen once: the in-memory :class:`~service.engine.Engine`, or the
:class:`~service.remote.engine.RemoteEngine` when Milvus is the system of record
(``HUBLESS_BACKEND=milvus``). Both answer the routes' calls; this module sits above both
packages so that neither imports the other upward (the API and the commands import it). The
remote engine is imported only when chosen: the base image has no Milvus client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from service.engine import Diagnostics, Engine
from service.engine.diagnostics import diagnose as diagnose_local
from service.engine.startup import OpenedStore
from service.engine.startup import load_engine as load_local_engine
from service.settings import Settings

if TYPE_CHECKING:
    from service.remote.engine import RemoteEngine


def load_engine(settings: Settings, opened: OpenedStore | None = None) -> Engine | RemoteEngine:
    """The engine the settings describe (``opened``: the local store, already opened)."""
    if settings.remote:
        from service.remote.startup import load_remote_engine

        return load_remote_engine(settings)
    return load_local_engine(settings, opened)


def diagnose(engine: Engine | RemoteEngine, probes: np.ndarray, **options: Any) -> Diagnostics:
    """:func:`service.engine.diagnostics.diagnose` on whichever engine serves."""
    if isinstance(engine, Engine):
        return diagnose_local(engine, probes, **options)
    from service.remote.diagnostics import diagnose_remote

    return diagnose_remote(engine, probes, **options)
