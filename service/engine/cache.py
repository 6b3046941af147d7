"""On-disk cache of the startup precompute, keyed by a hash of every input and parameter.

A restart with the same files and parameters loads the prepared views (and the banks' DBSN
Sinkhorn weights, which later upserts need) instead of recomputing them. Files are written to a
temporary name, fsynced and renamed, so a crash never leaves a
cache entry that looks complete but is not; an unreadable entry is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from service.algorithms import Banks, BankTopK, GalleryView, NormParams, PreparedItems

log = logging.getLogger(__name__)

#: Bump when the layout or the maths of the cached arrays change.
CACHE_FORMAT = 2


def cache_key(data_digest: str, params: dict[str, object]) -> str:
    payload = json.dumps(
        {"format": CACHE_FORMAT, "data": data_digest, "params": params}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _view_arrays(prefix: str, view: GalleryView) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_embeddings": view.embeddings,
        f"{prefix}_stats": view.stats,
        f"{prefix}_qtop_idx": view.query_top.idx,
        f"{prefix}_qtop_sim": view.query_top.sim,
        f"{prefix}_gtop_idx": view.gallery_top.idx,
        f"{prefix}_gtop_sim": view.gallery_top.sim,
    }


def _view_from(
    prefix: str, arrays: dict[str, np.ndarray], k: int, sizes: tuple[int, int]
) -> GalleryView:
    return GalleryView(
        arrays[f"{prefix}_embeddings"],
        arrays[f"{prefix}_stats"],
        BankTopK(arrays[f"{prefix}_qtop_idx"], arrays[f"{prefix}_qtop_sim"], k),
        BankTopK(arrays[f"{prefix}_gtop_idx"], arrays[f"{prefix}_gtop_sim"], k),
        sizes,
    )


def save(
    directory: Path, key: str, prepared: PreparedItems, banks: Banks, norm: NormParams
) -> Path:
    """Write ``prepared`` and the banks' DBSN weights at ``norm`` (the key must cover both)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _view_arrays("original", prepared.original)
    arrays["dbsn_log_v"] = banks.dbsn(norm).log_v
    if prepared.adjusted is not None:
        arrays |= _view_arrays("adjusted", prepared.adjusted)
    target = directory / f"{key}.npz"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load(directory: Path, key: str, banks: Banks, norm: NormParams) -> PreparedItems | None:
    """The entry saved under ``key``, if readable; seeds ``banks`` with its DBSN weights."""
    k, sizes = norm.dis_topk, banks.sizes
    path = directory / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        original = _view_from("original", arrays, k, sizes)
        adjusted = _view_from("adjusted", arrays, k, sizes) if "adjusted_stats" in arrays else None
        log_v = arrays["dbsn_log_v"]
        if log_v.shape != (sizes[0],):
            raise ValueError(f"dbsn_log_v has shape {log_v.shape}, expected ({sizes[0]},)")
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable cache entry", extra={"path": str(path), "error": str(exc)})
        return None
    banks.seed_dbsn(norm, log_v)
    return PreparedItems(original, adjusted)
