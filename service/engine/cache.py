"""On-disk cache of the startup precompute, keyed by a hash of every input and parameter.

A restart with the same files and parameters loads the prepared views (and the banks' DBSN
Sinkhorn weights, which later upserts need) instead of recomputing them. Files are written to a
temporary name, fsynced and renamed, so a crash never leaves a cache entry that looks complete
but is not. Each entry carries a digest of all its arrays, and must hold exactly the gallery
being served: an entry that is unreadable, fails its digest or does not fit is derived data, so
it is ignored with a warning and recomputed. Only the current entry is kept (every snapshot
changes the key; old entries would pile up).
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
from service.algorithms.blocks import block_rows, row_blocks
from service.engine.persistence import TMP_PREFIX

log = logging.getLogger(__name__)

#: Bump when the layout or the maths of the cached arrays change.
CACHE_FORMAT = 4
DIGEST = "digest"


def cache_key(data_digest: str, params: dict[str, object]) -> str:
    payload = json.dumps(
        {"format": CACHE_FORMAT, "data": data_digest, "params": params}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


#: the arrays of a :class:`BankTopK` (its spares too: without them every delete rescans)
_TOP_FIELDS = ("idx", "sim", "spare_idx", "spare_sim", "floor")


def _view_arrays(prefix: str, view: GalleryView) -> dict[str, np.ndarray]:
    arrays = {
        f"{prefix}_embeddings": view.embeddings,
        f"{prefix}_stats": view.stats,
        # widths: the query bank's top-k may be wider than its activation set (hub screening)
        f"{prefix}_top_k": np.array(
            [view.query_top.k, view.query_top.active or 0, view.gallery_top.k], np.int64
        ),
    }
    for name, top in (("qtop", view.query_top), ("gtop", view.gallery_top)):
        for part in _TOP_FIELDS:
            if getattr(top, part) is not None:
                arrays[f"{prefix}_{name}_{part}"] = getattr(top, part)
    return arrays


def _view_from(prefix: str, arrays: dict[str, np.ndarray], sizes: tuple[int, int]) -> GalleryView:
    query_k, active, gallery_k = (int(x) for x in arrays[f"{prefix}_top_k"])

    def top(name: str, k: int, active: int | None) -> BankTopK:
        idx, sim = arrays[f"{prefix}_{name}_idx"], arrays[f"{prefix}_{name}_sim"]
        spares = (arrays.get(f"{prefix}_{name}_{part}") for part in _TOP_FIELDS[2:])
        return BankTopK(idx, sim, k, active, *spares)

    return GalleryView(
        arrays[f"{prefix}_embeddings"],
        arrays[f"{prefix}_stats"],
        top("qtop", query_k, active or None),
        top("gtop", gallery_k, None),
        sizes,
    )


def _digest(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """BLAKE2b over every array's name, dtype, shape and bytes (as a uint8 array)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        h.update(array.reshape(-1).view(np.uint8))  # the bytes without a copy
    return np.frombuffer(h.digest(), dtype=np.uint8)


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
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays, **{DIGEST: _digest(arrays)})
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load(
    directory: Path,
    key: str,
    banks: Banks,
    norm: NormParams,
    gallery: np.ndarray | None = None,
) -> PreparedItems | None:
    """The entry for ``key`` if it is intact and holds exactly ``gallery`` (None otherwise);
    seeds ``banks`` with its DBSN weights. Without ``gallery`` (a key naming the input files)
    the entry's rows are the gallery: only their width is checked."""
    sizes = banks.sizes
    path = directory / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        stored = arrays.pop(DIGEST)
        if not np.array_equal(stored, _digest(arrays)):
            raise ValueError("the entry fails its digest")
        cached = arrays["original_embeddings"]
        if gallery is None:
            if cached.ndim != 2 or cached.shape[1] != banks.dim:
                raise ValueError(f"the entry holds rows of shape {cached.shape[1:]}")
        elif cached.dtype != gallery.dtype:  # the key covers it; a renamed file does not
            raise ValueError(f"the entry stores {cached.dtype}, the gallery is {gallery.dtype}")
        elif cached.shape != gallery.shape or not all(
            np.array_equal(cached[rows], gallery[rows])  # in blocks: no n × d temporary
            for rows in row_blocks(len(gallery), block_rows(gallery.shape[1], 1, 16 << 20))
        ):
            raise ValueError("the entry holds another gallery")
        original = _view_from("original", arrays, sizes)
        adjusted = _view_from("adjusted", arrays, sizes) if "adjusted_stats" in arrays else None
        log_v = arrays["dbsn_log_v"]
        if log_v.shape != (sizes[0],):
            raise ValueError(f"dbsn_log_v has shape {log_v.shape}, expected ({sizes[0]},)")
    except Exception as exc:  # any damage at all: derived data, recompute it
        log.warning(
            "ignoring a damaged or stale precompute cache entry; recomputing it",
            extra={"path": str(path), "error": f"{type(exc).__name__}: {exc}"},
        )
        return None
    banks.seed_dbsn(norm, log_v)
    return PreparedItems(original, adjusted)


def keep_only(directory: Path, key: str) -> None:
    """Delete every cache entry but ``key``'s (and temporary files of interrupted saves)."""
    for path in directory.glob("*.npz") if directory.is_dir() else []:
        if path.name != f"{key}.npz":
            path.unlink(missing_ok=True)
            log.info("removed an old precompute cache entry", extra={"path": str(path)})
