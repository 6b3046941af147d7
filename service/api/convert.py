"""JSON vectors to validated float32 arrays, with errors that name the request field."""

from __future__ import annotations

import numpy as np

from service.algorithms import InputError, check_embeddings


def to_embeddings(rows: list[list[float]], *, field: str, dim: int, limit: int) -> np.ndarray:
    """(m, dim) float32, L2-normalised; rejects empty, oversize, ragged, wrong-dim, NaN/inf and
    zero vectors."""
    if not rows:
        raise InputError(field, "expected at least one vector, got an empty list")
    if len(rows) > limit:
        raise InputError(field, f"{len(rows)} vectors in one request; the limit is {limit}")
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise InputError(field, f"vectors of different lengths {sorted(lengths)}; expected {dim}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
        array = np.asarray(rows, dtype=np.float32)
    # huge finite rows (|x| ≳ 1e19) are rescaled by check_embeddings before normalising
    return check_embeddings(array, field=field, dim=dim)
