"""Tests of ``hubless evaluate`` / ``hubless tune`` on tiny slices of the bundled demo dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from service.datasets.build import DEMO_DIR, EMBEDDING_FILES, MANIFEST

SPLIT_ROWS = {
    "gallery": "test",
    "queries": "test",
    "val_gallery": "val",
    "val_queries": "val",
    "query_bank": "bank",
    "gallery_bank": "bank",
}
TEXT_ROWS = {
    "gallery_ids.txt": "test",
    "queries.txt": "test",
    "queries_truth.txt": "test",
    "val_gallery_ids.txt": "val",
    "val_queries.txt": "val",
    "val_queries_truth.txt": "val",
}


def write_tiny_dataset(root: Path, *, test: int = 200, val: int = 120, bank: int = 300) -> Path:
    """A dataset directory with the demo's layout: the first rows of each demo split (pairs are
    stored in the same order in queries and gallery, so every truth id stays in its gallery)."""
    rows = {"test": test, "val": val, "bank": bank}
    root.mkdir(parents=True, exist_ok=True)
    for name, split in SPLIT_ROWS.items():
        np.save(root / f"{name}.npy", np.load(DEMO_DIR / f"{name}.npy")[: rows[split]])
    for name, split in TEXT_ROWS.items():
        lines = (DEMO_DIR / name).read_text("utf-8").split("\n")[: rows[split]]
        (root / name).write_text("".join(f"{line}\n" for line in lines), "utf-8")
    manifest = json.loads((DEMO_DIR / MANIFEST).read_text("utf-8"))
    manifest["sizes"] = {"test": test, "val": val, "query_bank": bank, "gallery_bank": bank}
    (root / MANIFEST).write_text(json.dumps(manifest), "utf-8")
    return root


def poison_test_split(source: Path, target: Path, seed: int = 1) -> Path:
    """A copy of ``source`` whose TEST files hold different (valid) data: shuffled, noisy."""
    shutil.copytree(source, target)
    rng = np.random.default_rng(seed)
    for name in ("gallery", "queries"):
        array = np.load(source / f"{name}.npy").astype(np.float32)
        array = array[::-1] + rng.normal(scale=0.05, size=array.shape).astype(np.float32)
        np.save(target / f"{name}.npy", array.astype(np.float16))
    return target


assert set(SPLIT_ROWS) == set(EMBEDDING_FILES)
