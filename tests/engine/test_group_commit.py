"""Group commit: changes that arrive together share one log transaction and one state swap, and
the result equals applying them one by one (a fresh start on the resulting gallery, every
method), while a failing change fails alone and a failing commit fails the whole group."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from service.algorithms import InvGCParams
from service.algorithms.blocks import FEW_ROWS
from service.backends import backend_factory
from service.engine import Engine
from service.engine.state import GalleryState, UnknownIdError
from tests.engine.test_updates import _assert_same, _engine, _unit


class _Log:
    """A change log recording each transaction (a list of changes), or refusing them all."""

    due_for_compaction = False

    def __init__(self, fail: bool = False) -> None:
        self.transactions: list[list[object]] = []
        self.fail = fail

    def append_many(self, changes: list[object]) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.transactions.append(list(changes))


def _grouped(engine: Engine, calls: list[Callable[[], object]]) -> list[object]:
    """Run ``calls`` in threads that all queue (in list order) while a commit seems to be
    running, then let them go: they form one group. Returns each call's result or exception."""
    outcomes: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            outcomes[index] = calls[index]()
        except Exception as exc:
            outcomes[index] = exc

    threads = []
    with engine._group:
        engine._committing = True  # as if a group were being committed: the calls queue up
    for index in range(len(calls)):
        thread = threading.Thread(target=run, args=(index,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 10
        while len(engine._queue) <= index and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(engine._queue) == index + 1
    with engine._group:
        engine._committing = False
        engine._group.notify_all()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def _on(backend: str, engine: Engine) -> Engine:
    """``engine``'s gallery served by ``backend`` (FAISS flat: exact scores, other code)."""
    if backend == "exact":
        return engine
    pytest.importorskip("faiss")
    factory = backend_factory("faiss", index="flat")
    state = engine.state
    state = GalleryState.create(
        state.version, state.catalog, state.original, state.adjusted, factory
    )
    return Engine(state, engine.banks, engine.norm, engine.invgc, factory, engine.screening)


@pytest.mark.parametrize(
    ("adjacency", "backend"),
    [("local", "exact"), ("full", "exact"), (None, "exact"), ("local", "faiss")],
)
def test_a_group_equals_its_changes_one_by_one_and_a_bad_change_fails_alone(
    adjacency: str | None, backend: str
) -> None:
    invgc = InvGCParams(pool_rate=0.1, adjacency=adjacency) if adjacency else None
    rng = np.random.default_rng(3)
    gallery = {f"g{i}": row for i, row in enumerate(_unit(rng, 40))}
    engine = _on(backend, _engine(list(gallery), np.array(list(gallery.values())), invgc))
    log = _Log()
    engine._store = log  # type: ignore[assignment]
    version = engine.state.version
    rows = _unit(rng, 9)
    meta = [{"id": i} for i in ("n0", "n1", "n2", "n3", "g5", "n4", "n5")]
    calls: list[Callable[[], object]] = [
        lambda: engine.upsert(["n0"], rows[:1], meta[:1]),  # three new-id upserts: one run
        lambda: engine.upsert(["n1", "n2"], rows[1:3], meta[1:3]),
        lambda: engine.upsert(["n3"], rows[3:4], meta[3:4]),
        lambda: engine.delete(["g3"]),
        lambda: engine.delete(["nobody"]),  # unknown id: refused alone
        lambda: engine.upsert(["g5", "n4"], rows[4:6], meta[4:6]),  # a replacement
        lambda: engine.delete(["g3"]),  # deleted earlier in this group: refused alone
        lambda: engine.upsert(["n0"], rows[6:7], meta[:1]),  # replaces the first
        lambda: engine.delete(["g7", "n1"]),
        lambda: engine.upsert(["n3"], rows[7:8], meta[3:4]),  # inserted earlier in the group
        lambda: engine.upsert(["n5"], rows[8:9], meta[6:7]),
    ]
    outcomes = _grouped(engine, calls)
    assert isinstance(outcomes[4], UnknownIdError) and isinstance(outcomes[6], UnknownIdError)
    accepted = [o for i, o in enumerate(outcomes) if i not in (4, 6)]
    versions = [o.version for o in accepted]  # type: ignore[attr-defined]
    assert versions == [version + 3] * 3 + list(range(version + 4, version + 10))
    assert [o.inserted for o in accepted[:3]] == [1, 2, 1]  # type: ignore[attr-defined]
    assert len(log.transactions) == 1 and len(log.transactions[0]) == 9  # one transaction
    assert engine.state.version == version + 9
    gallery |= {"n0": rows[0], "n1": rows[1], "n2": rows[2], "n3": rows[3]}
    del gallery["g3"], gallery["g5"], gallery["n0"]
    gallery |= {"g5": rows[4], "n4": rows[5], "n0": rows[6]}
    del gallery["g7"], gallery["n1"], gallery["n3"]
    gallery |= {"n3": rows[7], "n5": rows[8]}
    fresh = _on(backend, _engine(list(gallery), np.array(list(gallery.values())), invgc))
    assert engine.state.backends[False].name == fresh.state.backends[False].name == backend
    _assert_same(engine, fresh)


@pytest.mark.parametrize("size", [FEW_ROWS, FEW_ROWS + 3])
def test_a_merged_run_equals_a_fresh_start_on_either_product_path(size: int) -> None:
    """One-item upserts merged into one run of ``size`` rows: up to FEW_ROWS their bank
    products skip BLAS, above it they are one BLAS product; a fresh start computes them in
    blocks of the whole gallery. Same ids, stats and scores either way."""
    rng = np.random.default_rng(size)
    gallery = {f"g{i}": row for i, row in enumerate(_unit(rng, 30))}
    engine = _engine(list(gallery), np.array(list(gallery.values())), InvGCParams(pool_rate=0.1))
    engine._store = log = _Log()  # type: ignore[assignment]
    rows = _unit(rng, size)
    ids = [f"n{i}" for i in range(size)]
    calls: list[Callable[[], object]] = [
        lambda i=i: engine.upsert([ids[i]], rows[i : i + 1], [{"id": ids[i]}])  # type: ignore[misc]
        for i in range(size)
    ]
    outcomes = _grouped(engine, calls)
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert len(log.transactions) == 1 and len(log.transactions[0]) == size
    gallery |= dict(zip(ids, rows, strict=True))
    fresh = _engine(list(gallery), np.array(list(gallery.values())), InvGCParams(pool_rate=0.1))
    _assert_same(engine, fresh)


def test_a_failing_commit_fails_every_change_of_the_group_and_changes_nothing() -> None:
    rng = np.random.default_rng(4)
    engine = _engine([f"g{i}" for i in range(30)], _unit(rng, 30), InvGCParams(pool_rate=0.1))
    engine._store = _Log(fail=True)  # type: ignore[assignment]
    before = engine.state
    rows = _unit(rng, 2)
    outcomes = _grouped(
        engine,
        [
            lambda: engine.upsert(["a"], rows[:1], [{"id": "a"}]),
            lambda: engine.delete(["g1"]),
            lambda: engine.upsert(["b"], rows[1:], [{"id": "b"}]),
        ],
    )
    assert all(isinstance(o, OSError) for o in outcomes)
    assert engine.state is before and "a" not in before.rows and "g1" in before.rows
    engine._store = None
    engine.upsert(["c"], rows[:1], [{"id": "c"}])  # the engine goes on from `before`
    assert engine.state.ids == (*before.ids, "c")
