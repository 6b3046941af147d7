"""The live query bank over HTTP: served queries join the bank; after a refresh every method
equals a fresh start with the extended bank; the bank survives restarts; a start without a
query-bank file works."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from engine import demo_queries
from fastapi.testclient import TestClient

from service.algorithms import METHODS, check_embeddings
from service.engine import Engine
from service.engine.startup import load_engine
from service.settings import Settings

from . import DemoFiles, Serve, assert_error, demo_rows, put, running, search

#: Scores of two computations from the same inputs up to one rounding of the bank rows (a
#: fresh start re-normalises the saved bank): each similarity moves by at most about d·eps
#: (float32, d = 384), every method's score is a combination of similarities with total weight
#: ≤ 3 (csls: 2s − r), and the InvGC push adds the same order again.
SCORE_ATOL = 4 * 384 * float(np.finfo(np.float32).eps)

LIVE = {"live_query_bank": True, "live_query_bank_refresh_seconds": 0}


def held_out(count: int = 20, start: int = 1000) -> np.ndarray:
    return check_embeddings(demo_queries(count, start)[0], field="queries")


def refresh(client: TestClient, **headers: str) -> dict:
    response = client.post("/admin/query-bank/refresh", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def fresh_engine(engine: Engine, demo: DemoFiles, directory: Path, **overrides) -> Engine:
    """A fresh start (live bank off) on files holding ``engine``'s gallery and query bank."""
    directory.mkdir()
    state = engine.state
    np.save(directory / "gallery.npy", state.original.embeddings)
    (directory / "ids.txt").write_text("".join(f"{i}\n" for i in state.ids), encoding="utf-8")
    np.save(directory / "query_bank.npy", engine.banks.query_bank)
    settings = demo.settings(
        directory / "var",
        gallery=directory / "gallery.npy",
        gallery_ids=directory / "ids.txt",
        query_bank=directory / "query_bank.npy",
        cache=False,
        **overrides,
    )
    return load_engine(settings)


def assert_same_results(live: Engine, fresh: Engine, queries: np.ndarray) -> None:
    for method in METHODS:
        for invgc in (False, True):
            got = live.search(queries, k=10, method=method, invgc=invgc)
            want = fresh.search(queries, k=10, method=method, invgc=invgc)
            assert got.ids == want.ids, (method, invgc)
            np.testing.assert_allclose(
                np.array(got.scores), np.array(want.scores), rtol=0, atol=SCORE_ATOL
            )


@pytest.mark.parametrize(
    ("adjacency", "backend"),
    [("local", "exact"), ("full", "exact"), ("local", "faiss")],
)
def test_after_a_refresh_every_method_equals_a_fresh_start(
    serve: Serve, demo: DemoFiles, tmp_path: Path, adjacency: str, backend: str
) -> None:
    options = {"invgc_adjacency": adjacency, "backend": backend}
    client = serve(**LIVE, **options)
    engine: Engine = client.app.state.runtime.engine
    before = engine.search(held_out(), k=10, method="is", invgc=True)
    search(client, demo_queries(40, start=300)[0], method="raw")
    ids, rows = demo_rows(300, 303)
    put(client, ids, rows)  # gallery changes before the refresh are kept
    assert client.delete(f"/gallery/{ids[0]}").status_code == 200
    assert client.post("/diagnostics", json={"queries": held_out(3).tolist()}).status_code == 200
    assert refresh(client) == {"size": 440, "pending": 0, "version": 1}  # probes do not join
    assert engine.banks.sizes == (440, 400) and engine.state.size == 302
    after = engine.search(held_out(), k=10, method="is", invgc=True)
    assert after.scores[0][0] != before.scores[0][0]  # the statistics did change
    fresh = fresh_engine(engine, demo, tmp_path / "fresh", **options)
    assert_same_results(engine, fresh, held_out())


def test_the_bank_survives_restarts(demo: DemoFiles, tmp_path: Path) -> None:
    settings = demo.settings(tmp_path / "var", **LIVE)
    with running(settings) as client:
        search(client, demo_queries(25, start=300)[0])
        status = refresh(client)
        bank = client.app.state.runtime.engine.banks.query_bank.copy()
        search(client, demo_queries(5, start=400)[0])  # pending at shutdown: committed then
    assert status == {"size": 425, "pending": 0, "version": 1}
    with running(settings) as client:
        engine = client.app.state.runtime.engine
        assert client.get("/diagnostics").json()["live_query_bank"] == {
            "size": 430,
            "pending": 0,
            "version": 2,
        }
        np.testing.assert_array_equal(engine.banks.query_bank[:425], bank)
        restarted = engine.banks.query_bank.copy()
    with running(settings) as client:
        engine = client.app.state.runtime.engine
        np.testing.assert_array_equal(engine.banks.query_bank, restarted)
        assert refresh(client)["version"] == 2


def test_a_start_without_a_query_bank_file(serve: Serve) -> None:
    client = serve(**LIVE, query_bank=None)
    assert client.get("/readyz").status_code == 200
    probes = held_out(5)
    raw = search(client, probes, method="raw", invgc=False)["results"]
    for method in ("is", "dis", "nnn", "csls"):  # their only term is the (empty) query bank's
        got = search(client, probes, method=method, invgc=False)["results"]
        scale = 2.0 if method == "csls" else 1.0
        for hits, want in zip(got, raw, strict=True):
            assert [h["id"] for h in hits] == [h["id"] for h in want]
            np.testing.assert_allclose(
                [h["score"] for h in hits], [scale * h["score"] for h in want], atol=1e-6
            )
    for method in ("dualis", "dualdis"):  # the gallery-bank term stays
        assert search(client, probes, method=method)["results"]
    assert_error(client.get("/diagnostics"), 422, "query_bank", says="POST /diagnostics")
    posted = client.post("/diagnostics", json={"queries": probes.tolist()}).json()
    assert posted["live_query_bank"] == {"size": 0, "pending": 35, "version": 0}
    assert refresh(client) == {"size": 35, "pending": 0, "version": 1}
    assert client.get("/diagnostics").json()["live_query_bank"]["size"] == 35
    is_now = search(client, probes, method="is", invgc=False)["results"]
    assert [h["score"] for h in is_now[0]] != [h["score"] for h in raw[0]]


def test_the_refresh_route_needs_the_key_and_the_live_bank(serve: Serve) -> None:
    client = serve(**LIVE, api_key="sesame")
    assert_error(client.post("/admin/query-bank/refresh"), 401)
    assert refresh(client, Authorization="Bearer sesame")["size"] == 400
    off = serve()
    assert_error(off.post("/admin/query-bank/refresh"), 409, says="HUBLESS_LIVE_QUERY_BANK")
    assert off.get("/diagnostics").json()["live_query_bank"] is None


def test_prometheus_gauges_of_the_live_bank(serve: Serve) -> None:
    client = serve(**LIVE)
    search(client, demo_queries(3, start=300)[0])
    metrics = client.get("/metrics").text
    assert "hubless_query_bank_size 400.0" in metrics
    assert "hubless_query_bank_pending 3.0" in metrics


def test_the_background_refresh_applies_pending_rows(serve: Serve) -> None:
    client = serve(live_query_bank=True, live_query_bank_refresh_seconds=0.05)
    search(client, demo_queries(4, start=300)[0])
    deadline = time.monotonic() + 30
    while client.get("/diagnostics").json()["live_query_bank"]["pending"]:
        assert time.monotonic() < deadline, "the background refresh never ran"
        time.sleep(0.05)
    # pending counts rows until they are applied: the bank is extended by now
    assert client.app.state.runtime.engine.banks.sizes[0] == 404
    assert client.get("/diagnostics").json()["live_query_bank"] == {
        "size": 404,
        "pending": 0,
        "version": 1,
    }


def test_a_full_pending_buffer_triggers_the_refresh(serve: Serve) -> None:
    client = serve(**LIVE, live_query_bank_max_pending=8)  # no timer: only a full buffer
    search(client, demo_queries(10, start=300)[0])  # 8 pending, 2 not collected
    deadline = time.monotonic() + 30
    while client.app.state.runtime.engine.banks.sizes[0] != 408:
        assert time.monotonic() < deadline, "a full buffer did not wake the refresh"
        time.sleep(0.05)


def test_settings_allow_a_missing_query_bank_only_for_the_live_bank(demo: DemoFiles) -> None:
    with pytest.raises(ValueError, match="HUBLESS_QUERY_BANK may be left out"):
        Settings(gallery_bank=demo.gallery_bank)
    settings = Settings(gallery_bank=demo.gallery_bank, live_query_bank=True)
    assert settings.bank_paths() == (None, demo.gallery_bank)
    with pytest.raises(ValueError, match="LIVE_QUERY_BANK is refused with HUBLESS_BACKEND=milvus"):
        Settings(live_query_bank=True, backend="milvus", milvus_read_only=True)
