"""``hubless load`` into a milvus-lite server: three worker processes at once and the merge,
then a writer started on those collections adopts the load (nothing recomputed) and answers
as the exact engine does on the same files, every method on both views; a rerun worker and
merge change nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.algorithms import check_embeddings
from service.engine import Engine
from service.remote.engine import RemoteEngine
from service.remote.store import INVGC, ORIGINAL, QUERY
from service.serving import load_engine
from tests.support.demo import DemoFiles, demo_queries
from tests.support.engines import assert_equal_engines
from tests.support.milvus import environment

WORKERS = 3
EPS32 = float(np.finfo(np.float32).eps)


def _load(env: dict[str, str], *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "load", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return out


def _assert_same_bank_state(exact: Engine, remote: RemoteEngine) -> None:
    """Each bank item's top-k ids and similarities, as the exact engine keeps them; where an id
    differs, the two items' similarities to the bank item are equal within the float32 bound
    (a tie, possibly with the first item past the k-th)."""
    tol = 4 * exact.dim * EPS32
    row_of = {item: row for row, item in enumerate(exact.state.id_array.tolist())}
    for (view_name, bank), top in remote.served.tops.items():
        view = exact.state.view(view_name == INVGC)
        want = view.query_top if bank == QUERY else view.gallery_top
        np.testing.assert_allclose(top.sims, want.sim, atol=tol, rtol=0)
        vectors = exact.banks.query_bank if bank == QUERY else exact.banks.gallery_bank
        for i, j in np.argwhere(top.ids != exact.state.id_array[want.idx]):
            got = float(view.embeddings[row_of[top.ids[i, j]]] @ vectors[i])
            assert abs(got - float(want.sim[i, j])) <= 2 * tol, (view_name, bank, i, j)


def test_sharded_load_serves_like_the_exact_engine(
    demo: DemoFiles, milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = demo.settings(
        tmp_path / "remote", backend="milvus", milvus_uri=milvus_uri, milvus_collection="bulk"
    )
    env = environment(settings)
    state = ["--state-dir", str(tmp_path / "state"), "--threads", "1", "--chunk-rows", "64"]
    workers = [_load(env, "--shard", f"{i}/{WORKERS}", *state) for i in range(WORKERS)]
    for worker in workers:
        _finish(worker)
    _finish(_load(env, "--merge", str(WORKERS), *state))

    def no_reload(*args: object) -> None:
        raise AssertionError("the writer reloaded the gallery files: the load was not adopted")

    monkeypatch.setattr(RemoteEngine, "load_gallery", no_reload)
    remote = load_engine(settings)
    assert isinstance(remote, RemoteEngine)
    try:
        exact = load_engine(demo.settings(tmp_path / "exact"))
        assert (remote.version, remote.size) == (1, len(demo.ids))
        queries = check_embeddings(demo_queries(16, start=280)[0], field="queries")
        assert_equal_engines(exact, remote, queries)
        _assert_same_bank_state(exact, remote)
        # a worker and the merge run again (a restarted pod): same rows, same state
        _finish(_load(env, "--shard", f"1/{WORKERS}", *state))
        _finish(_load(env, "--merge", str(WORKERS), *state))
        assert remote.store.count(ORIGINAL) == remote.store.count(INVGC) == len(demo.ids)
        assert remote.refresh() is False  # the committed version did not move
        assert_equal_engines(exact, remote, queries)
    finally:
        remote.close()
        remote.store.drop()
