"""Searches running while another thread changes the gallery each see exactly one version.

The writer alternately inserts and deletes exact copies of the probe queries, so the version
a search reports determines what it must find: probe p's copy is its raw top-1 (similarity
1) exactly in the versions where the copy is present, and absent from every result otherwise.
Each result is also compared, afterwards, with a search on the immutable state of that version.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.algorithms import check_embeddings
from service.backends import backend_factory
from service.engine import Engine, SearchResult
from service.engine.startup import load_engine
from service.engine.state import GalleryState
from tests.support.demo import demo_queries, write_demo_slices

PROBES, ROUNDS, READERS = 6, 2, 2
METHODS = ("raw", "dualdis", "dis", "csls")


def _schedule() -> list[tuple[str, int]]:
    """(op, probe) per change: each round inserts every probe's copy, then deletes half of them
    and the other half in the next round's inserts' wake."""
    changes: list[tuple[str, int]] = []
    for round_ in range(ROUNDS):
        changes += [("upsert", p) for p in range(PROBES)]
        changes += [("delete", p) for p in range(PROBES) if (p + round_) % 2 == 0]
        changes += [("delete", p) for p in range(PROBES) if (p + round_) % 2 == 1]
    return changes


@pytest.mark.parametrize("dead_share", [1.0, 0.005])
def test_searches_see_exactly_one_version(tmp_path: Path, dead_share: float) -> None:
    """``dead_share`` 1: deleted rows stay dead throughout; 0.005: they are dropped in the
    background every few deletes (a new state of the same version), while searches run."""
    files = write_demo_slices(tmp_path / "data")
    engine = load_engine(files.settings(tmp_path / "var", cache=False))
    engine.dead_share = dead_share
    probes = check_embeddings(demo_queries(PROBES)[0], field="probes")
    base_ids = set(engine.state.ids)
    schedule = _schedule()
    states: dict[int, GalleryState] = {engine.state.version: engine.state}
    present: dict[int, frozenset[int]] = {engine.state.version: frozenset()}
    done = threading.Event()
    seen: list[tuple[str, SearchResult]] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            copies: set[int] = set()
            for op, p in schedule:
                if op == "upsert":
                    result = engine.upsert([f"copy-{p}"], probes[p : p + 1], [{"p": p}])
                    copies.add(p)
                else:
                    result = engine.delete([f"copy-{p}"])
                    copies.discard(p)
                present[result.version] = frozenset(copies)
                states[result.version] = engine.state  # only this thread changes it
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def read(offset: int) -> None:
        try:
            count = 0
            while not done.is_set() or count < len(METHODS):
                method = METHODS[(count + offset) % len(METHODS)]
                result = engine.search(probes, k=5, method=method, invgc=count % 2 == 0)
                seen.append((method, result))
                count += 1
                time.sleep(0.002)  # let the writer in: the point is overlap, not load
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write)]
    threads += [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert engine.state.version == 1 + len(schedule)
    with engine._dropping:  # a drop of dead rows still running in the background is over
        dead = engine.state.dead
    deletes = sum(op == "delete" for op, _ in schedule)
    assert dead == deletes if dead_share == 1 else dead < deletes  # dropped (or never) as set

    versions = {result.version for _, result in seen}
    assert len(versions) > 3, "the readers never overlapped the writer"
    backend = backend_factory("exact")
    checked: set[tuple[int, str, bool]] = set()
    for method, result in seen:
        copies = present[result.version]
        allowed = base_ids | {f"copy-{p}" for p in copies}
        for p, ids in enumerate(result.ids):
            assert set(ids) <= allowed, (result.version, method, ids)
            if method == "raw":
                assert (ids[0] == f"copy-{p}") == (p in copies), (result.version, ids)
        key = (result.version, method, result.invgc)
        if key in checked:
            continue
        checked.add(key)
        # exactly what a search on that version's immutable state returns
        frozen = Engine(states[result.version], engine.banks, engine.norm, engine.invgc, backend)
        again = frozen.search(probes, k=5, method=method, invgc=result.invgc)
        assert again.ids == result.ids
        np.testing.assert_allclose(np.array(again.scores), np.array(result.scores), atol=1e-6)
