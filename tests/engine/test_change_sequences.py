"""Random sequences of upserts, deletes and replacements equal a fresh start on the gallery they
end with (ids, stats, activation and every method's ids and scores), InvGC off, local and full,
on the exact back end and FAISS flat.

The guard for issue 16's O(batch) deletes: however a delete is carried out (rows copied now, or
tombstoned and compacted later), what a client sees must be what a fresh start on the surviving
items gives: with the dead rows in place, and again once they are dropped (``_assert_same``).
The delete-heavy sequences cross the share of dead rows at which they are dropped in the
background, so drops happen between (and while) changes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.algorithms import InvGCParams
from tests.engine.test_group_commit import _on
from tests.engine.test_updates import _assert_same, _engine, _unit

#: one step: (kind, count, seed). kind 0 inserts new ids, 1 deletes, 2 replaces, 3 mixes new
#: ids and replacements in one upsert
_STEPS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(1, 4), st.integers(0, 2**16)), min_size=1, max_size=8
)

#: the gallery never shrinks below this (a search needs at least k = 6 items)
_MIN_ITEMS = 12


#: delete-heavy: long sequences of mostly deletes (kind 1), with replacements among them
_DELETE_HEAVY = st.lists(
    st.tuples(st.sampled_from([1, 1, 1, 2, 3, 0]), st.integers(1, 4), st.integers(0, 2**16)),
    min_size=10,
    max_size=30,
)


def _apply(steps: list[tuple[int, int, int]], engine: object, gallery: dict) -> None:
    """Apply ``steps`` to ``engine`` and mirror them in ``gallery`` (id → row, in row order:
    a replaced item moves to the end). ``seed`` picks the ids only: the rows come from one
    generator, so no two items are equal (equal rows tie, and ties may break either way)."""
    fresh_id, draw = 0, np.random.default_rng(7)
    for kind, count, seed in steps:
        rng = np.random.default_rng(seed)
        room = len(gallery) - _MIN_ITEMS
        if kind == 1:
            if room < 1:
                continue
            gone = [str(i) for i in rng.choice(list(gallery), size=min(count, room), replace=False)]
            engine.delete(gone)  # type: ignore[attr-defined]
            for i in gone:
                del gallery[i]
            continue
        old = (
            [str(i) for i in rng.choice(list(gallery), size=count, replace=False)]
            if kind >= 2
            else []
        )
        new = [f"s{fresh_id + j}" for j in range(count)] if kind != 2 else []
        fresh_id += len(new)
        ids = new + old
        rows = _unit(draw, len(ids))
        engine.upsert(ids, rows, [{"id": i} for i in ids])  # type: ignore[attr-defined]
        for i in old:
            del gallery[i]
        gallery.update(zip(ids, rows, strict=True))


def _check(
    adjacency: str | None, backend: str, steps: list[tuple[int, int, int]], items: int
) -> None:
    """``steps`` on a gallery of ``items`` items (dead rows dropped past 10% of the rows, in
    the background) equal a fresh start on what is left."""
    invgc = InvGCParams(pool_rate=0.1, adjacency=adjacency) if adjacency else None
    rng = np.random.default_rng(items)
    gallery = {f"g{i}": row for i, row in enumerate(_unit(rng, items))}
    engine = _on(backend, _engine(list(gallery), np.array(list(gallery.values())), invgc))
    engine.dead_share = 0.1
    _apply(steps, engine, gallery)
    with engine._dropping:  # the last background drop, if one runs, is over
        pass
    fresh = _on(backend, _engine(list(gallery), np.array(list(gallery.values())), invgc))
    assert engine.state.backends[False].name == fresh.state.backends[False].name == backend
    assert engine.state.size == len(gallery)
    _assert_same(engine, fresh)


@pytest.mark.parametrize(
    ("adjacency", "backend"),
    [(None, "exact"), ("local", "exact"), ("full", "exact"), ("local", "faiss"), (None, "faiss")],
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_STEPS)
def test_random_change_sequences_equal_a_fresh_start(
    adjacency: str | None, backend: str, steps: list[tuple[int, int, int]]
) -> None:
    _check(adjacency, backend, steps, 24)


@pytest.mark.parametrize(
    ("adjacency", "backend"), [(None, "exact"), ("local", "exact"), ("local", "faiss")]
)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_DELETE_HEAVY)
def test_delete_heavy_sequences_across_drops_of_dead_rows_equal_a_fresh_start(
    adjacency: str | None, backend: str, steps: list[tuple[int, int, int]]
) -> None:
    """6 dead rows of 60 are dropped: several drops along a sequence."""
    _check(adjacency, backend, steps, 60)
