"""benchmarks/export_large.py at a tiny size, so the code path behind the documented 2 million
row figures keeps working: streamed gallery files, the measured ``hubless export`` subprocess,
the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks import export_large
from service.algorithms import STAT_COLUMNS


def test_gallery_is_streamed_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_large, "GENERATE_ROWS", 64)  # several chunks, a partial last one
    gallery, ids = tmp_path / "g.npy", tmp_path / "ids.txt"
    export_large.write_gallery(gallery, ids, 150, 16)
    rows = np.load(gallery, mmap_mode="r")
    assert (rows.shape, rows.dtype) == ((150, 16), np.float16)
    np.testing.assert_allclose(np.linalg.norm(rows.astype(np.float32), axis=1), 1, atol=2e-3)
    assert len(np.unique(rows, axis=0)) == 150
    assert ids.read_text(encoding="utf-8").splitlines() == [f"item-{i}" for i in range(150)]


def test_tree_rss_counts_this_process() -> None:
    assert export_large.tree_rss_kb(os.getpid()) > 10_000  # kB: this interpreter and numpy


def test_export_large_runs_and_reports(tmp_path: Path) -> None:
    workdir, results = tmp_path / "work", tmp_path / "results.json"
    argv = ["--rows", "2500", "--dim", "32", "--bank-rows", "200", "--chunk-rows", "1024"]
    argv += ["--workers", "2", "--workdir", str(workdir), "--results", str(results), "--keep"]
    (run,) = export_large.main(argv)
    assert (run.label, run.rows) == ("parquet", 2500)
    assert run.wall_seconds > 0 and 0 < run.peak_rss_mb <= run.peak_tree_rss_mb
    assert "hubless export --out" in run.command and "HUBLESS_GALLERY=" in run.command
    table = pq.read_table(workdir / "parquet" / "out" / "gallery.parquet")
    assert table.num_rows == 2500 and len(table.column("vector")[0]) == 32 + len(STAT_COLUMNS)
    assert not (workdir / "parquet" / "gallery.npy").exists()  # the big file is removed early
    report = json.loads(results.read_text(encoding="utf-8"))
    assert report["runs"][0]["rows"] == 2500 and "| parquet | 2,500 |" in report["table"]
