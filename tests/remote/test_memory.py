"""An API process's memory does not grow with the gallery: 50,000 items added through the
writer (batches of 1,000) move the writer's and a reader's resident memory by at most 30 MB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine import DemoFiles
from support.milvus import Serve

ITEMS, BATCH, WARMUP = 50_000, 1_000, 5
FLAT_MB = 30


@pytest.mark.slow
def test_rss_stays_flat_while_50k_items_are_added(
    demo: DemoFiles, milvus_uri: str, tmp_path: Path
) -> None:
    common = {"backend": "milvus", "milvus_uri": milvus_uri, "milvus_collection": "rss"}
    writer = Serve(demo.settings(tmp_path / "w", **common), tmp_path / "writer.log")
    reader = Serve(
        demo.settings(tmp_path / "r", milvus_read_only=True, **common), tmp_path / "reader.log"
    )
    try:
        writer.wait_ready()
        reader.wait_ready()
        rng = np.random.default_rng(0)
        baseline: tuple[float, float] | None = None
        for batch in range(ITEMS // BATCH):
            vectors = rng.standard_normal((BATCH, demo.embeddings.shape[1])).astype(np.float32)
            items = [
                {"id": f"m{batch}-{i}", "embedding": v.tolist()} for i, v in enumerate(vectors)
            ]
            answer = writer.http.put("/gallery", json={"items": items})
            assert answer.status_code == 200, answer.text
            if batch + 1 == WARMUP:  # allocator pools, imports and caches warmed up
                baseline = (writer.rss_mb(), reader.rss_mb())
        assert baseline is not None
        total = writer.http.get("/readyz").json()["gallery_size"]
        assert total == len(demo.ids) + ITEMS
        grown = (writer.rss_mb() - baseline[0], reader.rss_mb() - baseline[1])
        print(
            f"RSS growth over {ITEMS - WARMUP * BATCH} items: writer {grown[0]:.1f} MB, "
            f"reader {grown[1]:.1f} MB"
        )
        assert abs(grown[0]) <= FLAT_MB and abs(grown[1]) <= FLAT_MB
    finally:
        writer.stop()
        reader.stop()
