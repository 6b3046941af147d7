"""MilvusBackend on milvus-lite: exact parity with ExactBackend for every method, and diffs that
reach Milvus when an Engine built on the Milvus factory changes its gallery.

milvus-lite starts a server process per database file (~1 s): one file per module, and each
test uses its own collection prefix.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.algorithms import (
    METHODS,
    Banks,
    GalleryView,
    InvGCParams,
    NormParams,
    check_embeddings,
    dense_scores,
    plan_for,
    prepare_items,
)
from service.algorithms.augment import view_coordinates
from service.backends import ExactBackend
from service.backends import milvus as milvus_module
from service.backends.milvus import MilvusBackend, id_filter, milvus_client, row_digests
from service.engine.engine import Engine
from service.settings import DEMO_DIR
from tests.support import reference
from tests.support.backends import method_search

TOL = 1e-5
N_GALLERY, N_BANK, N_QUERIES = 600, 600, 16


def _demo(name: str, rows: int) -> np.ndarray:
    return check_embeddings(np.load(DEMO_DIR / name)[:rows], field=name)


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "backend.db")


@pytest.fixture(scope="module")
def banks() -> Banks:
    return Banks(_demo("query_bank.npy", N_BANK), _demo("gallery_bank.npy", N_BANK))


@pytest.fixture(scope="module")
def norm() -> NormParams:
    return NormParams(nnn_topk=32)


@pytest.fixture(scope="module")
def gallery() -> tuple[tuple[str, ...], np.ndarray]:
    ids = (DEMO_DIR / "gallery_ids.txt").read_text(encoding="utf-8").splitlines()[:N_GALLERY]
    return tuple(ids), _demo("gallery.npy", N_GALLERY)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return _demo("queries.npy", N_QUERIES)


@pytest.fixture(scope="module")
def parity(uri, banks, norm, gallery) -> dict[bool, tuple[GalleryView, MilvusBackend]]:
    ids, embeddings = gallery
    prepared = prepare_items(embeddings, banks, norm, InvGCParams())
    views = {False: prepared.original, True: prepared.adjusted}
    return {
        invgc: (
            view,
            _committed(
                MilvusBackend(view, ids, None, uri=uri, collection="parity", kind=_kind(invgc))
            ),
        )
        for invgc, view in views.items()
    }


def _kind(invgc: bool) -> str:
    return "invgc" if invgc else "original"


def assert_same_results(
    exact: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], dense: np.ndarray
) -> None:
    """Same scores at every rank within TOL, every returned row scores what it should, and ids
    equal the exact ones except where two items tie within TOL."""
    (rows_a, scores_a), (rows_b, scores_b) = exact, got
    assert rows_b.shape == rows_a.shape
    np.testing.assert_allclose(scores_b, scores_a, atol=TOL, rtol=0)
    true_b = np.take_along_axis(dense, rows_b, axis=1)
    np.testing.assert_allclose(scores_b, true_b, atol=TOL, rtol=0)
    for row in rows_b:
        assert len(set(row.tolist())) == len(row)
    differ = rows_a != rows_b
    assert np.all(np.abs(np.take_along_axis(dense, rows_a, axis=1) - true_b)[differ] <= TOL)


def _plan(method: str, view: GalleryView, backend: object, queries: np.ndarray, norm: NormParams):
    return plan_for(method, norm, view, queries.shape[0], lambda: backend.top1(queries))


def _committed(backend: MilvusBackend) -> MilvusBackend:
    """``backend`` with its writes applied (the engine commits after its change log)."""
    backend.commit()
    return backend


@pytest.mark.parametrize("invgc", [False, True], ids=["original", "invgc"])
@pytest.mark.parametrize("method", METHODS)
def test_search_equals_exact_backend(method, invgc, parity, gallery, queries, norm) -> None:
    view, backend = parity[invgc]
    exact = ExactBackend(view, gallery[0])
    assert np.array_equal(backend.top1(queries), exact.top1(queries))
    plan = _plan(method, view, exact, queries, norm)
    expected = method_search(exact, queries, method, norm, 10)
    got = method_search(backend, queries, method, norm, 10)
    assert_same_results(expected, got, dense_scores(queries, view, plan))


@pytest.mark.parametrize("invgc", [False, True], ids=["original", "invgc"])
def test_dbsn_equals_the_float64_reference(invgc, parity, banks, queries, norm) -> None:
    """SPEC's DBSN in float64 (tests/support/reference.py) within TOL, through Milvus."""
    view, backend = parity[invgc]
    got = method_search(backend, queries, "dbsn", norm, 10)
    solve = (norm.dbsn_tau, norm.dbsn_iterations)
    want = reference.dbsn_top(
        view.embeddings, queries, banks.query_bank, banks.gallery_bank, 10, *solve
    )
    dense = reference.dbsn_top(
        view.embeddings, queries, banks.query_bank, banks.gallery_bank, view.size, *solve
    )
    scores = np.empty((len(queries), view.size))
    np.put_along_axis(scores, dense[0], dense[1], axis=1)
    assert_same_results(want, got, scores)


def test_collection_holds_the_augmented_gallery(parity, uri, gallery) -> None:
    ids = gallery[0]
    for invgc, (view, backend) in parity.items():
        assert backend.collection_name == f"parity_{_kind(invgc)}"
        stored = _stored(uri, backend.collection_name, list(ids))
        assert set(stored) == set(ids)
        got = np.stack([stored[i] for i in ids])
        np.testing.assert_allclose(got, view_coordinates(view), atol=1e-7)


def test_restart_on_a_synced_collection_writes_nothing(parity, uri, gallery) -> None:
    view, _ = parity[True]
    again = MilvusBackend(view, gallery[0], None, uri=uri, collection="parity", kind="invgc")
    assert again.sync is None  # nothing written before the commit
    again.commit()
    assert (again.sync.mode, again.sync.upserted, again.sync.deleted) == ("reconcile", 0, 0)


def _stored(uri: str, name: str, ids: list[str]) -> dict[str, np.ndarray]:
    client = milvus_client(uri)
    rows = client.query(name, filter=id_filter(ids), output_fields=["vector"], limit=len(ids))
    return {row["id"]: np.asarray(row["vector"], np.float32) for row in rows}


def _count(uri: str, name: str) -> int:
    result = milvus_client(uri).query(name, filter="", output_fields=["count(*)"])
    return int(result[0]["count(*)"])


class Model:
    """What the gallery should be after a sequence of changes: id -> raw embedding, in order."""

    def __init__(self, ids: tuple[str, ...], embeddings: np.ndarray) -> None:
        self.items = dict(zip(ids, embeddings, strict=True))

    def upsert(self, ids: list[str], embeddings: np.ndarray) -> None:
        for item_id in ids:
            self.items.pop(item_id, None)
        self.items.update(zip(ids, embeddings, strict=True))

    def delete(self, ids: list[str]) -> None:
        for item_id in ids:
            del self.items[item_id]


@pytest.fixture
def engine_factory(uri, banks, norm, gallery) -> Callable[[str, InvGCParams | None], Engine]:
    def make(prefix: str, invgc: InvGCParams | None) -> Engine:
        ids, embeddings = gallery
        prepared = prepare_items(embeddings, banks, norm, invgc)

        def factory(view, row_ids, previous):
            return MilvusBackend(view, row_ids, previous, uri=uri, collection=prefix)

        metadata = (None,) * len(ids)
        return Engine.from_prepared(ids, metadata, prepared, banks, norm, invgc, factory)

    return make


def _check_engine(engine: Engine, model: Model, uri: str, queries: np.ndarray) -> None:
    """Milvus holds exactly the engine's rows, and engine searches equal a fresh exact build."""
    state = engine.state
    assert list(state.ids) == list(model.items)
    fresh = prepare_items(
        np.stack(list(model.items.values())), engine.banks, engine.norm, engine.invgc
    )
    views = {False: fresh.original, True: fresh.adjusted}
    for invgc, backend in state.backends.items():
        assert _count(uri, backend.collection_name) == state.size
        stored = _stored(uri, backend.collection_name, list(state.ids))
        got = np.stack([stored[i] for i in state.ids])
        np.testing.assert_allclose(got, view_coordinates(views[invgc]), atol=1e-6)
        exact = ExactBackend(views[invgc], state.ids)
        for method in ("dualdis", "csls"):  # dynamic, and a similarity weight of 2
            result = engine.search(queries, k=8, method=method, invgc=invgc)
            plan = _plan(method, views[invgc], exact, queries, engine.norm)
            rows, scores = method_search(exact, queries, method, engine.norm, 8)
            got_rows = np.array([[state.rows[i] for i in ids] for ids in result.ids])
            assert_same_results(
                (rows, scores),
                (got_rows, np.array(result.scores)),
                dense_scores(queries, views[invgc], plan),
            )


def test_engine_changes_reach_milvus(engine_factory, uri, gallery, queries) -> None:
    engine = engine_factory("engine", InvGCParams())
    state = engine.state
    assert {b.collection_name for b in state.backends.values()} == {
        "engine_original",
        "engine_invgc",
    }
    model = Model(*gallery)
    extra = _demo("val_gallery.npy", 12)
    # ids a filter expression must quote: pymilvus's own ids= deletes would break on these
    new_ids = [f"new-{i}" for i in range(5)] + ['queen\'s "guard"', "back\\slash", "two\nlines"]
    engine.upsert(new_ids, extra[:8], [None] * 8)
    model.upsert(new_ids, extra[:8])
    for backend in engine.state.backends.values():
        assert (backend.sync.mode, backend.sync.upserted, backend.sync.deleted) == ("diff", 8, 0)

    replaced = [gallery[0][3], gallery[0][100], "new-2"]
    engine.upsert(replaced, extra[8:11], [None] * 3)
    model.upsert(replaced, extra[8:11])
    for backend in engine.state.backends.values():
        assert (backend.sync.mode, backend.sync.upserted, backend.sync.deleted) == ("diff", 3, 0)
    gone = [gallery[0][7], 'queen\'s "guard"', "two\nlines", gallery[0][599]]
    engine.delete(gone)
    model.delete(gone)
    for backend in engine.state.backends.values():
        assert (backend.sync.mode, backend.sync.upserted, backend.sync.deleted) == ("diff", 0, 4)
    _check_engine(engine, model, uri, queries)


def test_full_adjacency_rewrites_only_its_own_view(engine_factory, uri, gallery, queries) -> None:
    engine = engine_factory("fulladj", InvGCParams(adjacency="full"))
    model = Model(*gallery)
    engine.delete([gallery[0][1]])
    model.delete([gallery[0][1]])
    original, adjusted = engine.state.backends[False], engine.state.backends[True]
    assert (original.sync.upserted, original.sync.deleted) == (0, 1)
    # the gallery mean moved: every adjusted row changed, and the diff found that by comparing
    assert (adjusted.sync.upserted, adjusted.sync.deleted) == (engine.state.size, 1)
    _check_engine(engine, model, uri, queries)


def test_a_failed_sync_is_repaired_by_the_next_one(
    engine_factory, uri, gallery, queries, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_factory("repair", None)
    model = Model(*gallery)
    extra = _demo("val_gallery.npy", 4)

    def broken(*args: object) -> int:
        raise ConnectionError("milvus went away")

    monkeypatch.setattr(milvus_module, "delete_ids", broken)
    with pytest.raises(ConnectionError):
        engine.upsert(["a", gallery[0][0]], extra[:2], [None, None])  # upserts land, then fails
    monkeypatch.undo()
    assert engine.state.version == 1  # the engine did not move on, but Milvus did, half-way
    assert _count(uri, "repair_original") == len(gallery[0]) + 1
    engine.upsert(["b"], extra[2:3], [None])
    model.upsert(["b"], extra[2:3])
    backend = engine.state.backends[False]
    assert backend.sync.mode == "reconcile"  # not a diff against a state Milvus no longer has
    assert (backend.sync.upserted, backend.sync.deleted) == (2, 1)  # "b" + old row 0; "a" gone
    _check_engine(engine, model, uri, queries)


def test_a_state_the_engine_never_adopted_is_accounted_for(parity, uri, banks, gallery) -> None:
    view, _ = parity[False]
    ids = gallery[0]
    first = _committed(MilvusBackend(view, ids, None, uri=uri, collection="adopt", kind="original"))
    keep = np.ones(view.size, dtype=bool)
    keep[:3] = False
    # written to Milvus, then dropped (as when the engine's change-log append fails)
    orphan = MilvusBackend(view.remove(keep, banks), ids[3:], first, uri=uri, collection="adopt")
    orphan.commit()
    assert (orphan.sync.mode, orphan.sync.deleted) == ("diff", 3)
    again = _committed(MilvusBackend(view, ids, first, uri=uri, collection="adopt"))
    assert (again.sync.mode, again.sync.upserted) == ("diff", 3)  # diffed from the orphan
    assert _count(uri, "adopt_original") == len(ids)
    del orphan, again
    smaller = MilvusBackend(view.remove(keep, banks), ids[3:], first, uri=uri, collection="adopt")
    smaller.commit()
    assert (smaller.sync.mode, smaller.sync.deleted) == ("reconcile", 3)  # nothing to diff from


def test_a_search_on_an_older_state_skips_ids_it_does_not_know(engine_factory) -> None:
    engine = engine_factory("stale", None)
    before = engine.state.backends[False]
    copies = before.view.embeddings[:5]  # exact duplicates of rows 0-4: tied top hits
    engine.upsert([f"copy-{i}" for i in range(5)], copies, [None] * 5)
    rows = before.search(copies, "raw", NormParams(), 3).rows
    assert rows.shape == (5, 3) and np.all(rows < before.view.size)  # asked again for more
    assert np.array_equal(before.top1(copies), np.arange(5))


def test_read_only_backend_never_writes(parity, uri, banks, gallery, queries) -> None:
    view, _ = parity[False]
    keep = np.ones(view.size, dtype=bool)
    keep[-1] = False
    reader = MilvusBackend(
        view.remove(keep, banks),
        gallery[0][:-1],
        None,
        uri=uri,
        collection="parity",
        kind="original",
        read_only=True,
    )
    assert reader.sync.mode == "none"
    assert _count(uri, "parity_original") == len(gallery[0])  # its missing id was not deleted
    rows = reader.search(queries, "dualis", NormParams(nnn_topk=32), 5).rows
    assert rows.shape == (len(queries), 5) and np.all(rows < reader.view.size)
    early = MilvusBackend(view, gallery[0], None, uri=uri, collection="later", read_only=True)
    assert not milvus_client(uri).has_collection("later_original")  # a reader creates nothing
    with pytest.raises(Exception, match="later_original"):
        early.top1(queries)


def test_auto_kind_refuses_a_third_live_chain(uri, parity, gallery) -> None:
    view, _ = parity[False]
    first = MilvusBackend(view, gallery[0], None, uri=uri, collection="claims")
    second = MilvusBackend(view, gallery[0], None, uri=uri, collection="claims")
    assert (first.collection_name, second.collection_name) == ("claims_original", "claims_invgc")
    with pytest.raises(RuntimeError, match="two live engines"):
        MilvusBackend(view, gallery[0], None, uri=uri, collection="claims")
    del first
    assert MilvusBackend(view, gallery[0], None, uri=uri, collection="claims").collection_name == (
        "claims_original"
    )


def test_a_reader_in_the_writers_process_claims_apart(uri, parity, gallery) -> None:
    """Regression: a read-only engine next to the writer's (an embedded reader) failed with
    "two live engines" although it never writes."""
    view, _ = parity[False]
    writers = [MilvusBackend(view, gallery[0], None, uri=uri, collection="shared") for _ in "ab"]
    readers = [
        MilvusBackend(view, gallery[0], None, uri=uri, collection="shared", read_only=True)
        for _ in "ab"
    ]
    assert [b.collection_name for b in writers + readers] == ["shared_original", "shared_invgc"] * 2
    assert all(reader.sync.mode == "none" for reader in readers)


def test_digests_see_every_bit() -> None:
    rows = np.random.default_rng(0).normal(size=(50, 388)).astype(np.float32)
    assert np.array_equal(row_digests(rows), row_digests(rows.copy()))
    nudged = rows.copy()
    nudged[np.arange(50), np.arange(50) * 7] = np.nextafter(
        nudged[np.arange(50), np.arange(50) * 7], 9
    )
    assert not np.any(row_digests(rows) == row_digests(nudged))
    assert len(set(row_digests(rows).tolist())) == 50


@pytest.mark.slow
@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_whole_demo_gallery(tmp_path: Path, index: str) -> None:
    """The full demo dataset (2000 items, 2000-item banks), every method, both views."""
    banks = Banks(_demo("query_bank.npy", 2000), _demo("gallery_bank.npy", 2000))
    ids = tuple((DEMO_DIR / "gallery_ids.txt").read_text(encoding="utf-8").splitlines())
    prepared = prepare_items(_demo("gallery.npy", 2000), banks, NormParams(), InvGCParams())
    queries = _demo("queries.npy", 200)
    uri = str(tmp_path / "whole.db")
    for invgc, view in ((False, prepared.original), (True, prepared.adjusted)):
        backend = _committed(
            MilvusBackend(view, ids, None, uri=uri, index=index, kind=_kind(invgc))
        )
        exact = ExactBackend(view, ids)
        for method in METHODS:
            plan = _plan(method, view, exact, queries, NormParams())
            expected = method_search(exact, queries, method, NormParams(), 10)
            got = method_search(backend, queries, method, NormParams(), 10)
            if index == "flat":
                assert_same_results(expected, got, dense_scores(queries, view, plan))
            else:  # approximate: most of the exact top-10 is found
                overlap = np.mean(
                    [len(set(a) & set(b)) / 10 for a, b in zip(expected[0], got[0], strict=True)]
                )
                assert overlap > 0.9


def test_construction_writes_nothing_commit_writes(uri, parity, gallery) -> None:
    """No external write in a constructor: the collection appears only at ``commit``."""
    view, _ = parity[False]
    backend = MilvusBackend(view, gallery[0], None, uri=uri, collection="lazy", kind="original")
    assert backend.sync is None
    assert not milvus_client(uri).has_collection("lazy_original")
    backend.commit()
    assert _count(uri, "lazy_original") == len(gallery[0])
    backend.commit()  # once only
    assert backend.sync is not None and backend.sync.upserted == len(gallery[0])


def test_a_change_the_log_refuses_never_reaches_milvus(engine_factory, uri, gallery) -> None:
    """The backends commit inside the log's transaction: a log that fails first (disk full
    on the insert) leaves Milvus as it was, and the engine too."""
    engine = engine_factory("refused", None)

    class Refusing:
        due_for_compaction = False

        def append_many(self, changes: object, before_commit: object = None) -> None:
            raise OSError(28, "No space left on device")

    engine._store = Refusing()  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space"):
        engine.upsert(["new"], _demo("val_gallery.npy", 1), [None])
    assert engine.state.version == 1
    assert _count(uri, "refused_original") == len(gallery[0])


def test_a_committed_backend_lets_its_predecessor_go(engine_factory) -> None:
    """Once committed, a backend holds no reference to the one it diffed from: a chain of
    states does not keep every past view alive."""
    engine = engine_factory("chain", None)
    first = weakref.ref(engine.state.backends[False])
    engine.upsert(["chained"], _demo("val_gallery.npy", 1), [None])
    gc.collect()
    assert first() is None
