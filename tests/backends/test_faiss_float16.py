"""The FAISS backend on a float16 gallery (``HUBLESS_STORAGE_DTYPE=float16``): rows widened to
float32 block by block on their way into the index. tests/backends/test_faiss.py's checks, run
on the demo gallery rounded to float16 (both views stored float16): flat gives the exact ids and
scores for every method, HNSW and IVF reach recall@10 ≥ 0.95 with exact scores, and an HNSW
index derived through upserts (float32 rows, rounded by the engine) and deletes serves like a
fresh build. The tolerance stays 1e-5: the float32 index rows hold the float16 values exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.algorithms import InvGCParams, prepare_items

from . import test_faiss
from .test_faiss import NORM
from .test_faiss import demo as demo  # the module's real data fixture


@pytest.fixture(scope="module")
def half(demo: dict) -> dict:
    """The demo gallery rounded to float16 and prepared as stored (both views float16)."""
    gallery = demo["gallery"].astype(np.float16)
    prepared = prepare_items(gallery, demo["banks"], NORM, InvGCParams())
    views = {False: prepared.original, True: prepared.adjusted}
    assert {v.embeddings.dtype for v in views.values()} == {np.dtype(np.float16)}
    return {**demo, "gallery": gallery, "views": views}


@pytest.mark.parametrize("invgc", [False, True], ids=["original", "invgc"])
def test_float16_flat_returns_the_exact_ids_and_scores_for_every_method(half, invgc):
    test_faiss.test_flat_returns_the_exact_ids_and_scores_for_every_method(half, invgc)


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_float16_ann_recall_and_exact_scores(half, index):
    test_faiss.test_ann_recall_at_10_is_at_least_095_for_every_method(half, index, True)


def test_float16_incremental_hnsw_serves_like_a_fresh_build(half):
    test_faiss.test_incremental_hnsw_serves_like_a_fresh_build(half)
