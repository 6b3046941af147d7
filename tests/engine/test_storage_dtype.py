"""float16 storage (``HUBLESS_STORAGE_DTYPE=float16``) end to end: a float16 service answers
as a float32 service on the same float16-rounded rows, changes keep the dtype and equal a fresh
float16 start, and restarts (precompute cache, snapshot) bring the same float16 rows back.

Tolerances, from the maths (d = ``DIM``):

- ``TOL32`` = 8·(d + 8)·eps32: the same stored values computed in float32 on two code paths
  (float16 rows widened block by block, or float32 rows holding the same values): a float32
  dot product of unit vectors errs by about d·eps32, each stat column is a Lipschitz function
  of the similarities with constant ≤ 3 and a method's score adds at most two of them
  (tests/algorithms/test_float16.py).
- ``TOL16`` = 7·2⁻¹¹ + ``TOL32``: InvGC's adjusted rows are stored rounded to float16 (each
  coordinate within 2⁻¹¹ of its value relative, so the row moves by ≤ 2⁻¹¹ in norm), which moves
  a similarity with a unit query by ≤ 2⁻¹¹, each stat by ≤ 3·2⁻¹¹, a score by ≤ (1 + 2·3)·2⁻¹¹.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from service.algorithms import METHODS, InvGCParams, check_embeddings, prepare_items
from service.backends import backend_factory
from service.engine import Engine
from service.engine.startup import _normalised, load_engine
from service.engine.state import GalleryState
from service.io import DataError
from tests.engine.test_change_sequences import _apply
from tests.engine.test_group_commit import _grouped, _Log, _on
from tests.engine.test_updates import DIM, NORM, _assert_same, _banks, _unit
from tests.support.api import running
from tests.support.demo import write_demo_slices

EPS16 = 2.0**-11  # unit roundoff of float16 (round to nearest)
TOL32 = 8 * (DIM + 8) * float(np.finfo(np.float32).eps)
TOL16 = 7 * EPS16 + TOL32
CASES = [(None, "exact"), ("local", "exact"), ("full", "exact"), ("local", "faiss")]


def _engine(ids: list[str], rows: np.ndarray, invgc: InvGCParams | None, backend: str) -> Engine:
    """An engine serving ``rows`` as given (their dtype is its storage dtype)."""
    banks = _banks()
    prepared = prepare_items(rows, banks, NORM, invgc)
    metadata = tuple({"id": i} for i in ids)
    engine = Engine.from_prepared(
        tuple(ids), metadata, prepared, banks, NORM, invgc, backend_factory("exact")
    )
    return _on(backend, engine)


def _dtypes(state: GalleryState) -> set[np.dtype]:
    views = [state.original] + ([state.adjusted] if state.adjusted is not None else [])
    return {v.embeddings.dtype for v in views}


def _assert_same_ranking(got, want, tol: float) -> None:
    """Scores within ``tol`` rank by rank (sorting is 1-Lipschitz in the max norm), and the same
    ids wherever the wanted scores are separated by more than 2·``tol`` (elsewhere a tie within
    the rounding may break either way)."""
    for got_ids, got_s, want_ids, want_s in zip(
        got.ids, got.scores, want.ids, want.scores, strict=True
    ):
        np.testing.assert_allclose(got_s, want_s, rtol=0, atol=tol)
        gaps = np.abs(np.diff(want_s))
        clear = np.ones(len(want_s), bool)
        clear[:-1] &= gaps > 2 * tol
        clear[1:] &= gaps > 2 * tol
        clear[-1] = False  # the k+1-th score is not returned: the last rank may swap with it
        assert [i for i, c in zip(got_ids, clear, strict=True) if c] == [
            i for i, c in zip(want_ids, clear, strict=True) if c
        ]


@pytest.mark.parametrize(("adjacency", "backend"), CASES)
def test_a_float16_service_answers_as_float32_on_rounded_rows(
    adjacency: str | None, backend: str
) -> None:
    invgc = InvGCParams(pool_rate=0.1, adjacency=adjacency) if adjacency else None
    rows16 = _unit(np.random.default_rng(3), 60).astype(np.float16)
    ids = [f"g{i}" for i in range(len(rows16))]
    half = _engine(ids, rows16, invgc, backend)
    single = _engine(ids, rows16.astype(np.float32), invgc, backend)
    assert _dtypes(half.state) == {np.dtype(np.float16)}
    queries = _unit(np.random.default_rng(9), 9)
    for method in METHODS:
        for view in (False, True) if invgc else (False,):
            got = half.search(queries, k=8, method=method, invgc=view)
            want = single.search(queries, k=8, method=method, invgc=view)
            if not view:  # the same values: the same ranking, float32 rounding apart
                assert got.ids == want.ids, method
                np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=TOL32)
            else:  # InvGC's adjusted rows are rounded to float16 in the float16 service
                _assert_same_ranking(got, want, TOL16)


@pytest.mark.parametrize(("adjacency", "backend"), CASES)
def test_changes_keep_float16_and_equal_a_fresh_float16_start(
    adjacency: str | None, backend: str
) -> None:
    """float32 batches are rounded before they are prepared: inserts, replacements and deletes
    leave exactly what a fresh float16 start on the surviving rows gives."""
    invgc = InvGCParams(pool_rate=0.1, adjacency=adjacency) if adjacency else None
    gallery = {f"g{i}": row for i, row in enumerate(_unit(np.random.default_rng(5), 24))}
    rows = np.array(list(gallery.values())).astype(np.float16)
    engine = _engine(list(gallery), rows, invgc, backend)
    steps = [(0, 3, 1), (1, 2, 2), (2, 2, 3), (3, 4, 4), (0, 1, 5), (1, 3, 6), (3, 2, 7)]
    _apply(steps, engine, gallery)  # upserts float32 rows
    assert _dtypes(engine.state) == {np.dtype(np.float16)}
    final = np.array(list(gallery.values())).astype(np.float16)
    fresh = _engine(list(gallery), final, invgc, backend)
    state = engine.state  # dead rows may still be there: the background drop is not awaited
    live = slice(None) if state.original.live is None else state.original.live
    stored = dict(zip(state.catalog.live_ids, state.original.embeddings[live], strict=True))
    assert sorted(stored) == sorted(gallery)  # every live id, once
    np.testing.assert_array_equal(np.array([stored[i] for i in gallery]), final)
    _assert_same(engine, fresh, atol=TOL32)


def test_an_item_returns_its_stored_float16_values_and_diagnostics_run(
    tmp_path: Path,
) -> None:
    files = write_demo_slices(tmp_path / "in")
    settings = files.settings(tmp_path / "var", storage_dtype="float16", cache=False)
    with running(settings) as client:
        body = client.get(f"/gallery/{files.ids[4]}", params={"embedding": "true"}).json()
        diagnostics = client.get("/diagnostics", params={"k": 5})  # Δdeg, ranks: float32 blocks
    assert diagnostics.status_code == 200, diagnostics.text
    want = check_embeddings(files.embeddings[4:5], field="x").astype(np.float16)[0]
    assert body["embedding"] == want.tolist()  # exactly the float16 values, as JSON numbers


def _ready(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    return [r for r in caplog.records if r.getMessage() == "engine ready"][-1]


def test_restarts_keep_float16_from_the_cache_and_from_a_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = write_demo_slices(tmp_path / "in")
    settings = files.settings(tmp_path / "var", storage_dtype="float16")
    with caplog.at_level(logging.INFO, logger="service.engine.startup"):
        first = load_engine(settings)
        assert not _ready(caplog).precompute_cached
        cached = load_engine(settings)
        assert _ready(caplog).precompute_cached
        # a float32 service on the same files must not take the float16 entry (nor the reverse)
        load_engine(files.settings(tmp_path / "var", storage_dtype="float32"))
        assert not _ready(caplog).precompute_cached
        for state in (first.state, cached.state):
            assert _dtypes(state) == {np.dtype(np.float16)}
        np.testing.assert_array_equal(
            cached.state.original.embeddings, first.state.original.embeddings
        )
        # a change, a snapshot (rows stored as float32: exact), a restart: the same float16 rows
        engine = load_engine(settings)
        extra = check_embeddings(files.embeddings[:6] + np.float32(0.01), field="x")  # float32
        engine.upsert(["x0", "x1", "x2"], extra[:3], [None] * 3)
        engine.compact()
        # and one change only in the log (float32 rows): replayed, rounded as when it was made
        engine.upsert(["x3", "x4", "x5"], extra[3:], [None] * 3)
        restarted = load_engine(settings)
        assert _ready(caplog).precompute_cached
    before, after = engine.state, restarted.state
    assert _dtypes(after) == {np.dtype(np.float16)} and after.ids == before.ids
    np.testing.assert_array_equal(after.original.embeddings, before.original.embeddings)
    np.testing.assert_array_equal(after.original.stats, before.original.stats)
    assert before.adjusted is not None and after.adjusted is not None
    np.testing.assert_array_equal(after.adjusted.embeddings, before.adjusted.embeddings)


@pytest.mark.parametrize(
    ("stored", "storage"), [("float32", "float16"), ("float16", "float32"), ("float64", "float16")]
)
def test_the_gallery_file_is_normalised_block_by_block(
    tmp_path: Path, stored: str, storage: str
) -> None:
    """The same rows as widening the whole file to float32, normalising it and rounding it
    (the path before), and a bad row is named by its row number in the file, not its block."""
    raw = np.random.default_rng(0).normal(size=(20_000, 512)).astype(stored)  # 3 blocks
    path, dtype = tmp_path / "g.npy", np.dtype(storage)
    got = _normalised(raw, path, 512, dtype)
    want = check_embeddings(raw.astype(np.float32), field="g").astype(dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    raw[17_001] = np.nan
    with pytest.raises(DataError, match="row 17001 contains NaN"):
        _normalised(raw, path, 512, dtype)


def test_a_group_commit_of_float32_upserts_stores_float16() -> None:
    """Concurrent upserts merged into one group are rounded as one batch: the same rows and
    stats as a fresh float16 start (the group's merged batch is float32 until it is prepared)."""
    invgc = InvGCParams(pool_rate=0.1)
    gallery = {f"g{i}": row for i, row in enumerate(_unit(np.random.default_rng(8), 30))}
    engine = _engine(
        list(gallery), np.array(list(gallery.values())).astype(np.float16), invgc, "exact"
    )
    engine._store = _Log()  # type: ignore[assignment]
    rows = _unit(np.random.default_rng(9), 4)
    ids = ["n0", "n1", "g4", "n2"]  # three new ids and a replacement
    calls = [
        lambda i=i: engine.upsert([ids[i]], rows[i : i + 1], [{"id": ids[i]}]) for i in range(4)
    ]
    assert not any(isinstance(o, Exception) for o in _grouped(engine, calls))
    del gallery["g4"]
    gallery |= dict(zip(ids, rows, strict=True))
    fresh = _engine(
        list(gallery), np.array(list(gallery.values())).astype(np.float16), invgc, "exact"
    )
    assert _dtypes(engine.state) == {np.dtype(np.float16)}
    _assert_same(engine, fresh, atol=TOL32)
