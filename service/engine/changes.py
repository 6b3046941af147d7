"""Gallery changes as values: what the engine applies, the change log stores and replays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine.state import Metadata


@dataclass(frozen=True)
class Upsert:
    """Insert or replace items. embeddings: (b, d) float32, L2-normalised."""

    ids: tuple[str, ...]
    embeddings: np.ndarray
    metadata: tuple[Metadata, ...]


@dataclass(frozen=True)
class Delete:
    """Remove items by id (all must exist)."""

    ids: tuple[str, ...]


Change = Upsert | Delete
