"""Low-level file I/O: reading embeddings and ids from disk (.npy / .npz; float16, float32 or
float64), for every layer above the algorithms (engine, export, datasets, commands)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """An input file is missing or malformed; the message names the file and the problem."""


def load_embeddings(path: Path, dtype: type | None = np.float32) -> np.ndarray:
    """A 2-D float array from ``.npy`` or ``.npz`` (the single array it holds), as ``dtype``
    (None: as stored, e.g. a large float16 gallery without a float32 copy)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                names = list(archive.files)
                if len(names) != 1:
                    raise DataError(f"{path}: expected one array in the .npz, found {names}")
                array = archive[names[0]]
        elif path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            raise DataError(f"{path}: expected a .npy or .npz file")
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot read embeddings ({exc})") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: expected a 2-D float array, got {array.ndim}-D {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def load_ids(path: Path | None, n: int) -> list[str]:
    """Gallery ids, one per line (UTF-8), or the row numbers as strings when ``path`` is None."""
    if path is None:
        return [str(i) for i in range(n)]
    if not path.exists():
        raise DataError(f"{path}: no such file")
    ids = path.read_text(encoding="utf-8").splitlines()
    if len(ids) != n:
        raise DataError(f"{path}: {len(ids)} ids for {n} gallery rows")
    if len(set(ids)) != n:
        raise DataError(f"{path}: ids are not unique")
    if any(not i for i in ids):
        raise DataError(f"{path}: empty id")
    return ids


def file_digest(*paths: Path | None) -> str:
    """SHA-256 over the given files' bytes (None contributes a marker), for cache keys."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            digest.update(b"\0none\0")
            continue
        digest.update(str(path.stat().st_size).encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
