"""Incremental updates equal a fresh build, and shared growth buffers never leak into snapshots.

Appends write into spare rows shared along a chain of states (see ``GrowthBuffers``), and the
id → row index is shared too: these tests pin that an older snapshot never sees a later (or a
failed) change, and that any sequence of inserts, replacements and deletions leaves exactly the
state a fresh precompute of the resulting gallery gives, for LocalAdj, full adjacency and no
InvGC.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.algorithms import Banks, InvGCParams, NormParams, check_embeddings, prepare_items
from service.backends import backend_factory
from service.engine import Engine
from service.engine.state import Catalog

DIM, BANK = 16, 60
NORM = NormParams(nnn_topk=8, csls_topk=4, dis_topk=2)
METHODS = ("raw", "dualis", "dualdis", "csls", "nnn", "dbsn")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    return check_embeddings(rng.normal(size=(n, DIM)).astype(np.float32), field="test")


def _banks() -> Banks:
    rng = np.random.default_rng(0)
    return Banks(_unit(rng, BANK), _unit(rng, BANK))


def _engine(ids: list[str], gallery: np.ndarray, invgc: InvGCParams | None) -> Engine:
    banks = _banks()
    prepared = prepare_items(gallery, banks, NORM, invgc)
    metadata = tuple({"id": i} for i in ids)
    return Engine.from_prepared(
        tuple(ids), metadata, prepared, banks, NORM, invgc, backend_factory("exact")
    )


def _assert_same(actual: Engine, expected: Engine, atol: float = 1e-5) -> None:
    """``actual`` serves what ``expected`` (a fresh start) does, with its tombstones (rows of
    deleted items left dead) and again once they are dropped (then row for row)."""
    _assert_same_items(actual, expected, atol)
    if actual.state.dead:
        actual.compact_tombstones()
        assert actual.state.dead == 0 and actual.state.original.live is None
        _assert_same_items(actual, expected, atol)


def _assert_same_items(actual: Engine, expected: Engine, atol: float) -> None:
    a, e = actual.state, expected.state
    assert a.ids == e.ids and list(a.rows) == list(e.rows) and a.size == e.size
    assert [m["id"] for m in a.metadata] == list(a.ids)
    rows = np.array([a.rows[i] for i in e.ids], dtype=np.int64)  # each item's row in ``a``
    assert (np.diff(rows) > 0).all() and a.row_count == a.size + a.dead
    if not a.dead:
        np.testing.assert_array_equal(rows, np.arange(e.size))
    dead = np.setdiff1d(np.arange(a.row_count), rows)
    views = [(a.original, e.original)]
    if e.adjusted is not None:
        views.append((a.adjusted, e.adjusted))
    for got, want in views:
        assert got.size == a.row_count and got.live_size == want.size
        np.testing.assert_array_equal(got.dead_rows, dead)
        np.testing.assert_allclose(got.embeddings[rows], want.embeddings, atol=atol)
        np.testing.assert_allclose(got.stats[rows], want.stats, atol=atol)
        np.testing.assert_array_equal(got.activated[rows], want.activated)
        assert not got.activated[dead].any()  # a dead row is in no bank item's top-k
    queries = _unit(np.random.default_rng(9), 7)
    for method in METHODS:
        for invgc in (False, True) if e.adjusted is not None else (False,):
            got = actual.search(queries, k=6, method=method, invgc=invgc)
            want = expected.search(queries, k=6, method=method, invgc=invgc)
            assert got.ids == want.ids, (method, invgc)
            np.testing.assert_allclose(np.array(got.scores), np.array(want.scores), atol=atol)


@pytest.mark.parametrize("adjacency", ["local", "full", None])
def test_changes_equal_a_fresh_build(adjacency: str | None) -> None:
    invgc = InvGCParams(pool_rate=0.1, adjacency=adjacency) if adjacency else None
    rng = np.random.default_rng(1)
    gallery = {f"g{i}": row for i, row in enumerate(_unit(rng, 40))}
    engine = _engine(list(gallery), np.array(list(gallery.values())), invgc)
    for step in range(12):  # inserts, replacements, deletions, and batches mixing them
        if step % 3 == 2:
            gone = list(rng.choice(list(gallery), size=1 + step % 4, replace=False))
            engine.delete(gone)
            for i in gone:
                del gallery[i]
            continue
        new = [f"n{step}-{j}" for j in range(1 + step % 5)]
        old = list(rng.choice(list(gallery), size=step % 3, replace=False))
        rows = _unit(rng, len(new) + len(old))
        engine.upsert(new + old, rows, [{"id": i} for i in new + old])
        for i in old:
            del gallery[i]  # a replaced item moves to the end
        gallery.update(zip(new + old, rows, strict=True))
    fresh = _engine(list(gallery), np.array(list(gallery.values())), invgc)
    _assert_same(engine, fresh)


def test_a_snapshot_never_sees_later_or_failed_changes() -> None:
    rng = np.random.default_rng(2)
    engine = _engine([f"g{i}" for i in range(30)], _unit(rng, 30), InvGCParams(pool_rate=0.1))
    engine.upsert(["a"], _unit(rng, 1), [{"id": "a"}])  # the first append allocates spare rows
    before = engine.state
    frozen = before.original.embeddings.copy(), before.adjusted.stats.copy(), before.ids
    queries = _unit(rng, 4)
    answer = engine.search(queries, k=5, method="dualdis", invgc=True)

    def failing_append(changes: object) -> None:
        raise OSError(28, "No space left on device")

    class Store:  # a change log that refuses the write: the change must not become visible
        append_many = staticmethod(failing_append)

    engine._store = Store()  # type: ignore[assignment]
    with pytest.raises(OSError):
        engine.upsert(["lost"], _unit(rng, 1), [{"id": "lost"}])
    engine._store = None
    assert engine.state is before and "lost" not in before.rows
    engine.upsert(
        ["b", "c"], _unit(rng, 2), [{"id": "b"}, {"id": "c"}]
    )  # writes past `before` again
    assert "lost" not in engine.state.rows and engine.state.ids[-3:] == ("a", "b", "c")
    assert before.ids == frozen[2] and "b" not in before.rows and len(before.rows) == 31
    np.testing.assert_array_equal(before.original.embeddings, frozen[0])
    np.testing.assert_array_equal(before.adjusted.stats, frozen[1])
    again = Engine(before, engine.banks, engine.norm, engine.invgc, engine._backend)
    assert again.search(queries, k=5, method="dualdis", invgc=True).ids == answer.ids
    # the chain of `before` continues in new buffers: its next state is still exact
    rows = np.concatenate([before.original.embeddings, _unit(rng, 1)])
    again.upsert(["d"], rows[-1:], [{"id": "d"}])
    _assert_same(again, _engine([*before.ids, "d"], rows, engine.invgc))


def test_the_row_index_ignores_entries_of_other_snapshots() -> None:
    first = Catalog.create(["x", "y"], [None, None])
    longer = first.append(("z",), (None,))
    assert "z" in longer.rows and "z" not in first.rows and len(first.rows) == 2
    assert first.rows.get("z") is None and first.rows["y"] == 1
    branch = first.append(("w",), (None,))  # from an older snapshot: a copy, not a write
    assert branch.rows["w"] == 2 and "z" not in branch.rows and longer.rows["z"] == 2
    assert "w" not in longer.rows
    assert list(branch.keep(np.array([True, False, True])).rows) == ["x", "w"]
    with pytest.raises(KeyError):
        longer.rows["w"]
