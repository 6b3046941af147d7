"""The live query bank's own mechanics: reservoir sampling, its store, the pending buffer, and
gallery changes made while a refresh rebuilds the statistics."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.algorithms import item_stats
from service.engine.live_bank import LiveQueryBank, reservoir_slots
from service.engine.query_bank_store import QueryBankStore
from service.engine.startup import load_engine
from service.io import DataError
from tests.support.demo import demo_queries, write_demo_slices

MASK, GOLDEN = (1 << 64) - 1, 0x9E3779B97F4A7C15


def splitmix64(x: int) -> int:
    z = (x + GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_reservoir(rows: list[int], slots: int, seed: int) -> list[int]:
    """Algorithm R one row at a time, with the documented draw h(seed, t) mod (t + 1)."""
    bank: list[int] = []
    for t, row in enumerate(rows):
        if len(bank) < slots:
            bank.append(row)
            continue
        j = splitmix64(t ^ ((seed * GOLDEN) & MASK)) % (t + 1)
        if j < slots:
            bank[j] = row
    return bank


def unit_queries(count: int, start: int = 0) -> np.ndarray:
    queries = demo_queries(count, start)[0]
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def bank_of(directory: Path, file_rows: int = 2, capacity: int = 7, **options) -> LiveQueryBank:
    """A live bank of 3-d rows (file rows = basis vector e0)."""
    file = np.tile(np.eye(3, dtype=np.float32)[0], (file_rows, 1))
    store = QueryBankStore(directory / "query_bank.sqlite3")
    values = {"max_pending": 1000, "seed": 0, **options}
    return LiveQueryBank(file, store, capacity=capacity, **values)


def tagged(tags: list[int]) -> np.ndarray:
    """Rows that carry their tag in coordinate 1 (so a bank's rows can be read back as tags)."""
    return np.array([[0.0, t, 1.0] for t in tags], dtype=np.float32)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(0, 60),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    seed=st.integers(0, 2**32),
)
def test_the_bank_is_algorithm_r_whatever_the_batches(count: int, cuts: list[int], seed: int):
    """Applying the served stream in any batches (and restarts between them) gives the bank of
    algorithm R applied one row at a time: the policy depends only on the seed and the order."""
    stream = list(range(1, count + 1))
    bounds = sorted({0, count, *(c for c in cuts if c < count)})
    with tempfile.TemporaryDirectory() as tmp:
        for start, stop in pairwise(bounds):
            bank = bank_of(Path(tmp), seed=seed)  # a restart before every batch
            bank.offer(tagged(stream[start:stop]))
            bank.refresh(None)
            bank.store.close()
        bank = bank_of(Path(tmp), seed=seed)
        assert bank.served[:, 1].astype(int).tolist() == reference_reservoir(stream, 5, seed)
        assert bank.seen == count
        assert bank.rows().shape == (2 + min(5, count), 3)
        bank.store.close()


def test_every_served_query_has_the_same_chance() -> None:
    """Algorithm R's invariant: after t rows each one is kept with probability slots/t."""
    slots, stream, seeds = 10, 100, 400
    kept = np.zeros(stream)
    for seed in range(seeds):
        kept[reference_reservoir(list(range(stream)), slots, seed)] += 1
    for t in range(stream):  # the vectorised draw is the reference's
        assert reservoir_slots(t, min(t, slots), 1, slots, 7)[0] == (
            t if t < slots else _draw(t, 7, slots)
        )
    expected = seeds * slots / stream  # 40 per row
    halves = kept[: stream // 2].sum(), kept[stream // 2 :].sum()
    sigma = np.sqrt(seeds * slots / 2)  # generous: the halves' counts are ≤ binomial-variance
    assert all(abs(h - expected * stream / 2) < 5 * sigma for h in halves), halves
    assert kept.sum() == seeds * slots


def _draw(t: int, seed: int, slots: int) -> int:
    j = splitmix64(t ^ ((seed * GOLDEN) & MASK)) % (t + 1)
    return j if j < slots else -1


def test_pending_is_bounded_and_a_full_buffer_wakes_the_refresh(tmp_path: Path) -> None:
    bank = bank_of(tmp_path, max_pending=4, capacity=100)
    bank.offer(tagged([1, 2, 3]))
    assert not bank._wake.is_set()
    bank.offer(tagged([4, 5, 6]))
    assert bank._wake.is_set()
    assert (bank.status().pending, bank.dropped) == (4, 2)
    status = bank.refresh(None)
    assert (status.size, status.pending, status.version) == (2 + 4, 0, 1)
    assert bank.refresh(None) == status  # nothing pending: nothing changes


def test_the_store_keeps_rows_and_counters_and_drops_corrupt_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bank = bank_of(tmp_path, capacity=100)
    bank.offer(tagged([1, 2, 3, 4]))
    bank.refresh(None)
    bank.store.close()
    with sqlite3.connect(tmp_path / "query_bank.sqlite3") as db:  # a flipped byte in row 1
        blob = bytearray(db.execute("SELECT embedding FROM rows WHERE slot = 1").fetchone()[0])
        blob[5] ^= 0x40
        db.execute("UPDATE rows SET embedding = ? WHERE slot = 1", (bytes(blob),))
    with caplog.at_level(logging.WARNING, logger="service.engine.query_bank_store"):
        bank = bank_of(tmp_path, capacity=100)
    assert "dropped corrupt" in caplog.text
    assert bank.served[:, 1].tolist() == [1, 3, 4]
    assert (bank.seen, bank.version) == (4, 1)
    bank.store.close()
    again = bank_of(tmp_path, capacity=100)  # rewritten without the bad row: no new warning
    assert again.served[:, 1].tolist() == [1, 3, 4]
    again.store.close()


def test_a_store_of_another_dimension_or_no_room_is_a_clear_error(tmp_path: Path) -> None:
    bank = bank_of(tmp_path)
    bank.offer(tagged([1]))
    bank.refresh(None)
    bank.store.close()
    with pytest.raises(DataError, match="3-d rows, the banks are 4-d"):
        LiveQueryBank(
            np.ones((1, 4), np.float32),
            QueryBankStore(tmp_path / "query_bank.sqlite3"),
            capacity=9,
            max_pending=9,
            seed=0,
        )
    with pytest.raises(DataError, match="LIVE_QUERY_BANK_SIZE=2 leaves no room"):
        bank_of(tmp_path / "other", file_rows=2, capacity=2)


def test_a_failed_refresh_changes_nothing_and_keeps_its_rows(tmp_path: Path) -> None:
    settings_ = write_demo_slices(tmp_path / "in").settings(
        tmp_path / "var", live_query_bank=True, cache=False
    )
    engine = load_engine(settings_)
    live = engine.live_bank
    assert live is not None
    state, banks = engine.state, engine.banks

    def fail(*args, **kwargs):
        raise OSError("disk full")

    live.store.commit = fail  # type: ignore[method-assign]
    live.offer(unit_queries(5))
    with pytest.raises(OSError):
        live.refresh(engine)
    assert engine.state is state and engine.banks is banks
    assert live.status().as_dict() == {"size": 400, "pending": 5, "version": 0}
    live.max_pending = 3  # the rows put back may overfill the buffer: nothing more joins
    live.offer(unit_queries(2))
    assert (live.status().pending, live.dropped) == (5, 2)
    live.store.close()


def test_during_a_refresh_searches_go_on_and_gallery_changes_wait(tmp_path: Path) -> None:
    """The refresh holds the write lock: searches (and their joining the bank) go on with the
    previous state; an upsert sent meanwhile waits, then applies to the new banks (its stats
    are those of the extended bank), so no change is lost."""
    settings_ = write_demo_slices(tmp_path / "in").settings(
        tmp_path / "var", live_query_bank=True, cache=False
    )
    engine = load_engine(settings_)
    live = engine.live_bank
    assert live is not None
    live.offer(unit_queries(30, start=300))
    committing, release = threading.Event(), threading.Event()
    commit = live.store.commit

    def slow_commit(*args, **kwargs):
        committing.set()
        release.wait(5)
        commit(*args, **kwargs)

    live.store.commit = slow_commit  # type: ignore[method-assign]
    refresh = threading.Thread(target=live.refresh, args=(engine,))
    refresh.start()
    assert committing.wait(30)
    item = unit_queries(1, start=500)
    upsert = threading.Thread(target=engine.upsert, args=(["late"], item, [None]))
    upsert.start()
    # searches and their joining the bank go on meanwhile (on the previous state)
    found = engine.search(item, k=1, method="dualdis", invgc=True)
    assert found.version == 1 and engine.banks.sizes[0] == 400
    live.offer(item)
    assert live.status().pending == 30 + 1  # the rows being applied still count
    time.sleep(0.2)
    assert upsert.is_alive()  # waiting for the refresh's write lock
    release.set()
    refresh.join()
    upsert.join()
    state = engine.state
    assert "late" in state.rows and state.size == 301
    assert engine.banks.sizes[0] == 430
    row = state.rows["late"]
    expected = item_stats(item, engine.banks.query_bank, engine.banks.gallery_bank, engine.norm)
    # the same float32 reductions of the same products: equal to a few ulps of values ≲ 3
    np.testing.assert_allclose(state.original.stats[row], expected[0], rtol=0, atol=1e-6)
    live.store.close()


@pytest.mark.parametrize("adjacency", ["local", "full"])
def test_a_refresh_of_an_empty_gallery(tmp_path: Path, adjacency: str) -> None:
    settings_ = write_demo_slices(tmp_path / "in").settings(
        tmp_path / "var", live_query_bank=True, cache=False, invgc_adjacency=adjacency
    )
    engine = load_engine(settings_)
    live = engine.live_bank
    assert live is not None
    engine.delete(list(engine.state.ids))
    queries = unit_queries(3)
    live.offer(queries)
    assert live.refresh(engine).size == 403
    assert engine.search(queries, k=3, method="dualdis", invgc=True).ids == [[], [], []]
    engine.upsert(["only"], queries[:1], [None])
    assert engine.search(queries, k=3, method="dualdis", invgc=True).ids == [["only"]] * 3
    live.store.close()


def test_a_flipped_byte_anywhere_in_the_store_never_yields_a_wrong_row(tmp_path: Path) -> None:
    """Every 23rd byte of the store flipped in turn, then a start: either a clear error, or
    rows that are all original rows (some may be dropped) with counters that are the stored ones
    or restarted from the rows. Never a silently wrong row."""
    bank = bank_of(tmp_path / "good", capacity=100)
    bank.offer(tagged(list(range(1, 41))))
    bank.refresh(None)
    bank.store.close()
    original = bank.served.copy()
    data = (tmp_path / "good" / "query_bank.sqlite3").read_bytes()
    outcomes = {"error": 0, "intact": 0, "repaired": 0}
    for at in range(0, len(data), 23):
        case = tmp_path / f"flip{at}"
        case.mkdir()
        flipped = bytearray(data)
        flipped[at] ^= 0x10
        (case / "query_bank.sqlite3").write_bytes(bytes(flipped))
        try:
            loaded = bank_of(case, capacity=100)
        except DataError:
            outcomes["error"] += 1
            continue
        rows = loaded.served
        assert all((original == row).all(axis=1).any() for row in rows), at
        counters = (loaded.seen, loaded.version)
        assert counters in ((40, 1), (rows.shape[0], 0)), (at, counters)
        outcomes["intact" if rows.shape[0] == 40 and counters == (40, 1) else "repaired"] += 1
        loaded.store.close()
    assert outcomes["intact"] and outcomes["repaired"], outcomes
