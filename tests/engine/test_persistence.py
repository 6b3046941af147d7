"""Durability at engine level: changes survive a restart, compaction keeps the gallery bit for
bit, a change that cannot be committed leaves everything as it was, and the precompute cache is
reused only when it fits. Damage, disk full and migration: tests/reliability/test_durability.py."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.algorithms import check_embeddings, prepare_items
from service.engine import Engine
from service.engine.changes import Upsert
from service.engine.persistence import DB_NAME, GalleryStore
from service.engine.startup import load_engine
from service.engine.state import GalleryState
from service.io import load_embeddings
from service.settings import Settings
from tests.support.demo import DemoFiles, demo_queries, write_demo_slices

METHODS = ("raw", "dualdis", "csls")  # the static, dynamic and weighted paths


@pytest.fixture
def files(tmp_path: Path) -> DemoFiles:
    return write_demo_slices(tmp_path / "data")


@pytest.fixture
def settings(files: DemoFiles, tmp_path: Path) -> Settings:
    return files.settings(tmp_path / "var")


def _unit(x: np.ndarray) -> np.ndarray:
    return check_embeddings(x, field="test")


def _changes(engine: Engine, files: DemoFiles) -> list[int]:
    """Four changes (insert, update, delete, insert+update); the versions they produced."""
    rng = np.random.default_rng(7)
    new = _unit(rng.normal(size=(6, 384)).astype(np.float32))
    meta = [{"n": i, "tag": "ü"} for i in range(6)]
    return [
        engine.upsert(["n0", "n1", "n2"], new[:3], meta[:3]).version,
        engine.upsert([files.ids[5], "n1"], new[3:5], meta[3:5]).version,
        engine.delete([files.ids[9], "n2"]).version,
        engine.upsert(["n3", files.ids[5]], new[4:6], [None, {"again": True}]).version,
    ]


def _live_rows(state: GalleryState) -> np.ndarray:
    view = state.original
    return view.embeddings if view.live is None else view.embeddings[view.live]


def _assert_same_engine(actual: Engine, expected: Engine) -> None:
    """Same version, ids, metadata and embeddings, and the same answers for every method."""
    a, e = actual.state, expected.state
    assert a.version == e.version
    assert a.ids == e.ids
    assert [dict(m) if m else m for m in a.metadata] == [dict(m) if m else m for m in e.metadata]
    # stored as served and never re-normalised: bit for bit (the live rows: a background drop
    # of dead rows may have run in one engine and not yet in the other)
    np.testing.assert_array_equal(_live_rows(a), _live_rows(e))
    queries = _unit(demo_queries(10)[0])
    for method in METHODS:
        for invgc in (False, True):
            got = actual.search(queries, k=10, method=method, invgc=invgc)
            want = expected.search(queries, k=10, method=method, invgc=invgc)
            assert got.ids == want.ids, (method, invgc)
            np.testing.assert_allclose(np.array(got.scores), np.array(want.scores), atol=1e-6)


def _ready_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "engine ready"]


def test_changes_survive_a_restart(settings: Settings, files: DemoFiles) -> None:
    engine = load_engine(settings)
    assert _changes(engine, files) == [2, 3, 4, 5]
    restarted = load_engine(settings)
    _assert_same_engine(restarted, engine)
    assert restarted.state.catalog.metadata[restarted.state.rows[files.ids[5]]] == {"again": True}
    # and the restarted engine keeps logging: a further change survives the next restart too
    restarted.delete(["n0"])
    _assert_same_engine(load_engine(settings), restarted)


def test_compaction_then_restart_gives_the_same_gallery(
    settings: Settings, files: DemoFiles, caplog: pytest.LogCaptureFixture
) -> None:
    engine = load_engine(settings)
    _changes(engine, files)
    assert engine.compact() == 5
    assert _logged_changes(settings) == 0
    _assert_same_engine(load_engine(settings), engine)
    # changes after a compaction are logged on top of the snapshot
    engine.delete(["n1"])
    caplog.set_level(logging.INFO)
    _assert_same_engine(load_engine(settings), engine)
    assert _ready_records(caplog)[-1].replayed_changes == 1


def test_changes_go_on_during_a_compaction_and_stay_in_the_log(
    settings: Settings, files: DemoFiles
) -> None:
    """The snapshot is written without the write lock: a change made meanwhile is applied at
    once, logged after the snapshot's position, and kept by a restart (the snapshot does not
    include it, the log does)."""
    engine = load_engine(settings)
    assert engine._store is not None
    rng = np.random.default_rng(11)
    vectors = _unit(rng.normal(size=(3, 384)).astype(np.float32))
    engine.upsert(["before"], vectors[:1], [None])
    write_snapshot = engine._store.snapshot
    during: list[object] = []

    def slow_snapshot(*args: object) -> None:
        change = threading.Thread(
            target=lambda: during.append(engine.upsert(["during"], vectors[1:2], [{"d": 1}]))
        )
        change.start()
        change.join(timeout=60)
        assert during, "a change waited for the compaction"
        write_snapshot(*args)  # type: ignore[arg-type]

    engine._store.snapshot = slow_snapshot  # type: ignore[method-assign]
    engine._on_compact = lambda state: during.append(engine.delete(["before"]))  # cache too
    engine.compact()
    assert _logged_changes(settings) == 2  # the upsert and the delete made meanwhile
    assert "during" in engine.state.rows and "before" not in engine.state.rows
    _assert_same_engine(load_engine(settings), engine)


def test_a_snapshot_older_than_the_stored_one_is_not_written(tmp_path: Path) -> None:
    """Two compactions crossing: the older snapshot arrives last and is dropped, not written
    over the newer one (whose changes are gone from the log)."""
    store = GalleryStore(tmp_path / "store")
    store.recover()
    vectors = _unit(np.random.default_rng(3).normal(size=(2, 384)).astype(np.float32))
    store.append(Upsert(("a",), vectors[:1], (None,)))
    store.append(Upsert(("b",), vectors[1:], (None,)))
    store.snapshot(("a", "b"), (None, None), vectors, 2)
    store.snapshot(("a",), (None,), vectors[:1], 1)  # older: ignored
    with pytest.raises(ValueError, match="the log ends at change 2"):
        store.snapshot(("a", "b"), (None, None), vectors, 3)
    store.close()
    reopened = GalleryStore(tmp_path / "store")
    snapshot, changes = reopened.recover()
    assert snapshot is not None and snapshot.ids == ("a", "b") and changes == []
    reopened.close()


def _logged_changes(settings: Settings) -> int:
    (path,) = (settings.data_dir / "galleries").glob(f"*/{DB_NAME}")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM changes").fetchone()[0]


def test_the_log_is_compacted_automatically_past_its_threshold(
    settings: Settings, files: DemoFiles
) -> None:
    """Three changes per snapshot at most: the fourth triggers a background compaction, and a
    restart (which would otherwise replay every change ever made) replays at most three."""
    small = settings.model_copy(update={"compact_changes": 3})
    engine = load_engine(small)
    rng = np.random.default_rng(5)
    for n in range(7):
        engine.upsert([f"auto{n}"], _unit(rng.normal(size=(1, 384))), [None])
    deadline = time.monotonic() + 30
    while _logged_changes(small) >= 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _logged_changes(small) < 3
    _assert_same_engine(load_engine(small), engine)


def test_the_precompute_cache_is_reused_only_for_the_same_parameters(
    settings: Settings, files: DemoFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first = load_engine(settings)
    second = load_engine(settings)
    changed = load_engine(settings.model_copy(update={"beta_gallery_bank": 5.0}))
    again = load_engine(settings.model_copy(update={"beta_gallery_bank": 5.0}))
    uncached = load_engine(settings.model_copy(update={"cache": False}))
    cached = [r.precompute_cached for r in _ready_records(caplog)]
    assert cached == [False, True, False, True, False]
    _assert_same_engine(second, first)
    _assert_same_engine(uncached, first)
    _assert_same_engine(again, changed)
    queries = _unit(demo_queries(3)[0])
    scores = [e.search(queries, k=3, method="dualis", invgc=True).scores for e in (first, again)]
    assert not np.allclose(scores[0], scores[1])  # beta changed the scores: not the old cache


def test_the_version_continues_after_compaction(settings: Settings, files: DemoFiles) -> None:
    """A version number must never name two different galleries, even across restarts."""
    engine = load_engine(settings)
    _changes(engine, files)
    engine.compact()
    restarted = load_engine(settings)
    assert restarted.state.version == engine.state.version == 5
    assert restarted.delete(["n0"]).version == 6


def test_a_change_that_cannot_be_logged_is_not_applied(
    settings: Settings, files: DemoFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable before visible: if the log write fails, nobody ever sees the change."""
    engine = load_engine(settings)
    before = engine.state

    def full_disk(store: GalleryStore, changes: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GalleryStore, "append_many", full_disk)
    with pytest.raises(OSError, match="No space"):
        engine.delete([files.ids[0]])
    assert engine.state is before
    monkeypatch.undo()
    _assert_same_engine(load_engine(settings), engine)


def test_a_cached_start_from_the_files_takes_the_rows_from_the_entry(
    settings: Settings,
    files: DemoFiles,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keyed by the files' digest, a hit never reads or normalises the gallery file again (at
    1M rows that was most of a restart); a rewritten file is another store and another key."""
    caplog.set_level(logging.INFO)
    first = load_engine(settings)
    import service.engine.startup as startup

    def banks_only(path: Path, **kwargs: object) -> np.ndarray:
        assert path != files.gallery, "a cached start read the gallery file"
        return load_embeddings(path, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(startup, "load_embeddings", banks_only)
        again = load_engine(settings)
    _assert_same_engine(again, first)
    np.save(files.gallery, np.load(files.gallery)[::-1])  # other rows: the entry is not theirs
    reversed_rows = load_engine(settings)
    assert [r.precompute_cached for r in _ready_records(caplog)] == [False, True, False]
    assert reversed_rows.state.ids == first.state.ids
    np.testing.assert_array_equal(
        reversed_rows.state.original.embeddings, first.state.original.embeddings[::-1]
    )


@pytest.mark.parametrize("changed", [{"dbsn_tau": 0.02}, {"dbsn_iterations": 3}])
def test_dbsn_weights_come_from_the_cache_and_its_key_covers_tau_and_t(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, changed
) -> None:
    """A restart reuses the banks' Sinkhorn weights (no solve, upserts still exact); another τ
    or T is another cache entry with other dbsn scores."""
    caplog.set_level(logging.INFO)
    first = load_engine(settings)
    import service.algorithms.stats as stats_module

    def no_solve(*args: object) -> None:
        raise AssertionError("the cached weights should have been used")

    with monkeypatch.context() as patched:
        patched.setattr(stats_module, "sinkhorn_log_v", no_solve)
        again = load_engine(settings)
        _assert_same_engine(again, first)
        new = _unit(np.random.default_rng(3).normal(size=(2, 384)).astype(np.float32))
        again.upsert(["x0", "x1"], new, [None, None])  # needs the weights: from the cache
    fresh = prepare_items(new, first.banks, first.norm, None).original
    np.testing.assert_array_equal(again.state.original.stats[-2:], fresh.stats)
    other = load_engine(settings.model_copy(update=changed))
    assert [r.precompute_cached for r in _ready_records(caplog)] == [False, True, False]
    queries = _unit(demo_queries(3)[0])
    scores = [e.search(queries, k=3, method="dbsn", invgc=False).scores for e in (first, other)]
    assert not np.allclose(scores[0], scores[1])
