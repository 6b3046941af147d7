"""The peers and concurrency benchmarks at a tiny size: they never rot, and the peers agree.

A peer that is not installed (``nnn-retrieval`` lives in the ``peers`` extra, not in ``test``)
is skipped with the reason. The agreement rows are correctness claims, so they are asserted:
every top-10 list equals the peer's up to float32 near ties (reasoned in ``bench_peers``).
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from benchmarks import bench_concurrency, bench_peers
from benchmarks.run import _OPENBLAS_THREADS, _loaded_openblas


@pytest.fixture(scope="module")
def tiny() -> bench_peers.Matrices:
    return bench_peers.matrices(quick=True)[0]


@pytest.mark.parametrize("peer", sorted(bench_peers.PEERS))
def test_each_peer_runs_and_agrees(peer: str, tiny: bench_peers.Matrices) -> None:
    reason = bench_peers.missing().get(peer)
    if reason:
        pytest.skip(reason)
    rows = bench_peers.RUNNERS[peer](tiny, True)
    assert rows and all(math.isfinite(row.value) for row in rows)
    agreement = [row for row in rows if "equal up to float32 ties" in row.name]
    assert agreement
    assert all(row.value == 1.0 for row in agreement), [row.detail for row in agreement]
    timed = [row for row in rows if row not in agreement]
    assert {row.name.split(", batch ")[1].split(",")[0] for row in timed} == {"1", "64"}


def test_agreement_tells_near_ties_from_disagreements() -> None:
    scores = np.array([3.0, 2.0, 2.0 + 1e-9, 1.0, 0.5])
    ours = np.array([[0, 1, 2], [0, 1, 2]])
    theirs = np.array([[0, 2, 1], [0, 3, 2]])  # a near-tie swap; a real disagreement

    def exact(query: int, rows: np.ndarray) -> np.ndarray:
        return scores[rows]

    share, detail = bench_peers.agreement(ours, theirs, exact, tie=1e-6)
    assert share == 0.5
    assert "2 of 2 top-3 lists differ (1 only in order), 1 of them float32 near ties" in detail
    assert bench_peers.agreement(ours, ours, exact, tie=1e-6) == (
        1.0,
        "all 2 top-3 lists identical",
    )


def _openblas_threads() -> list[int]:
    counts = []
    for lib in _loaded_openblas():
        handle = ctypes.CDLL(lib)
        counts += [getattr(handle, s)() for s in _OPENBLAS_THREADS if hasattr(handle, s)][:1]
    return counts


def test_one_thread_each_restores_the_thread_counts() -> None:
    faiss = pytest.importorskip("faiss")
    before = _openblas_threads(), faiss.omp_get_max_threads()
    with bench_peers.one_thread_each():
        assert set(_openblas_threads()) <= {1} and faiss.omp_get_max_threads() == 1
    assert (_openblas_threads(), faiss.omp_get_max_threads()) == before


def test_concurrency_quick_run_serves_both_thread_settings() -> None:
    rows = bench_concurrency.measure(quick=True)
    names = [row.name.rsplit(", ", 1)[-1] for row in rows]
    assert names == [*bench_concurrency.THREAD_SETTINGS, "in-process Engine.search", "coalesced"]
    assert all(math.isfinite(row.value) and row.value > 0 for row in rows)
    assert all("8 clients:" in row.detail for row in rows)
