"""Concurrent searches that share one engine search (service/api/coalesce.py) get what a lone
search would give them: their own rows, offset, k and threshold, their own errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.algorithms import InputError, check_embeddings
from service.api.coalesce import SearchCoalescer, search_slots
from service.engine import SearchResult
from service.engine.startup import load_engine
from tests.support.demo import demo_queries, write_demo_slices

N_ITEMS = 30


class FakeEngine:
    """Scores ``-|q - j|`` for items j = 0..29 and scalar queries q; the first search blocks
    until ``release`` is set, so the others queue up behind it."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # queries per engine search
        self.release = threading.Event()
        self.lock = threading.Lock()

    def search(
        self,
        queries: np.ndarray,
        *,
        k: int,
        method: str,
        invgc: bool,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> SearchResult:
        with self.lock:
            self.calls.append(len(queries))
            first = len(self.calls) == 1
        if first:
            assert self.release.wait(10)
        if np.any(queries[:, 0] < 0):
            raise InputError("queries", "negative query")
        ids, scores, sims = [], [], []
        for q in queries[:, 0]:
            score = -np.abs(q - np.arange(N_ITEMS, dtype=np.float64))
            order = np.argsort(-score, kind="stable")[offset : offset + k]
            keep = order if score_threshold is None else order[score[order] >= score_threshold]
            ids.append([f"item-{j}" for j in keep])
            scores.append(score[keep])
            sims.append(score[keep] / 2)
        return SearchResult(7, method, invgc, ids, scores, sims)


def _run_concurrently(
    coalescer: SearchCoalescer, engine: FakeEngine, requests: list[dict]
) -> list[SearchResult | BaseException]:
    """The first request alone (it blocks in the engine), then the others; each on a thread."""
    out: list[SearchResult | BaseException | None] = [None] * len(requests)

    def call(i: int) -> None:
        request = dict(requests[i])
        queries = np.asarray(request.pop("q"), np.float64).reshape(-1, 1)
        try:
            out[i] = coalescer.search(engine, queries, method="raw", invgc=False, **request)  # type: ignore[arg-type]
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    while not engine.calls:  # the first search is running
        threading.Event().wait(0.001)
    for thread in threads[1:]:
        thread.start()
    while sum(len(w) for w in coalescer._waiting.values()) < len(requests) - 1:
        threading.Event().wait(0.001)
    engine.release.set()
    for thread in threads:
        thread.join(10)
    return out  # type: ignore[return-value]


def _alone(request: dict) -> SearchResult:
    engine = FakeEngine()
    engine.release.set()
    request = dict(request)
    queries = np.asarray(request.pop("q"), np.float64).reshape(-1, 1)
    return engine.search(queries, method="raw", invgc=False, **request)


def test_queued_requests_share_one_search_and_keep_their_own_slices() -> None:
    engine = FakeEngine()
    requests = [
        {"q": [3.0], "k": 5},
        {"q": [10.2], "k": 3},
        {"q": [20.0, 0.4], "k": 4, "offset": 2},
        {"q": [7.0], "k": 10, "score_threshold": -2.5},
        {"q": [29.0], "k": 1, "offset": 0, "score_threshold": 1.0},  # nothing passes
    ]
    results = _run_concurrently(SearchCoalescer(max_running=1), engine, requests)
    assert engine.calls == [1, 5]  # the first alone, then every queued query in one search
    for request, got in zip(requests, results, strict=True):
        want = _alone(request)
        assert isinstance(got, SearchResult)
        assert got.ids == want.ids
        for a, b in zip(
            got.scores + got.similarities, want.scores + want.similarities, strict=True
        ):
            np.testing.assert_array_equal(a, b)
        assert (got.version, got.method, got.invgc) == (7, "raw", False)


def test_a_failed_shared_search_gives_each_request_its_own_answer() -> None:
    engine = FakeEngine()
    requests = [
        {"q": [1.0], "k": 2},
        {"q": [2.0], "k": 2},
        {"q": [-1.0], "k": 2},
        {"q": [4.0], "k": 2},
    ]
    results = _run_concurrently(SearchCoalescer(max_running=1), engine, requests)
    assert engine.calls[:2] == [1, 3] and len(engine.calls) == 5  # shared failed, then alone
    assert isinstance(results[2], InputError)
    for i in (0, 1, 3):
        assert results[i].ids == _alone(requests[i]).ids  # type: ignore[union-attr]


def test_a_batch_stops_growing_at_its_query_limit() -> None:
    engine = FakeEngine()
    requests = [{"q": [1.0], "k": 1}] + [{"q": [float(i)] * 2, "k": 1} for i in range(5)]
    coalescer = SearchCoalescer(4, max_running=1)
    results = _run_concurrently(coalescer, engine, requests)
    assert engine.calls == [1, 4, 4, 2]
    assert all(isinstance(r, SearchResult) for r in results)
    assert not coalescer._waiting and not coalescer._running  # idle keys are removed


def test_one_search_slot_per_core_that_blas_leaves_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert search_slots() == 1  # BLAS spreads each product over every core
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert search_slots() == 2
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert search_slots() == 8
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "junk")
    assert search_slots() == 2


@pytest.mark.parametrize(("method", "slots"), [("raw", 1), ("dualdis", 2)])
def test_real_engine_concurrent_searches_equal_lone_ones(
    tmp_path: Path, method: str, slots: int
) -> None:
    """8 threads × 4 one-query searches through one coalescer: same ids as the engine's own
    search of each query; scores within float32 rounding of products of other batch shapes
    (d · eps per unit-norm product, times the scores' scale)."""
    files = write_demo_slices(tmp_path / "data")
    engine = load_engine(files.settings(tmp_path / "var", cache=False))
    queries = check_embeddings(demo_queries(32)[0], field="queries")
    want = [engine.search(q[None], k=10, method=method, invgc=True) for q in queries]
    coalescer, got = SearchCoalescer(max_running=slots), [None] * len(queries)

    def worker(start: int) -> None:
        for i in range(start, len(queries), 8):
            got[i] = coalescer.search(engine, queries[i : i + 1], k=10, method=method, invgc=True)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not coalescer._waiting and not coalescer._running
    for g, w in zip(got, want, strict=True):
        assert g is not None and g.ids == w.ids
        scale = 1 + float(np.abs(w.scores[0]).max())
        tol = 4 * queries.shape[1] * np.finfo(np.float32).eps * scale
        np.testing.assert_allclose(g.scores[0], w.scores[0], rtol=0, atol=tol)
        np.testing.assert_allclose(g.similarities[0], w.similarities[0], rtol=0, atol=tol)


def test_http_searches_wait_in_the_coalescer_not_for_a_heavy_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 concurrent one-query searches over HTTP, the first held in the engine: the 7 others
    all queue in the coalescer (none stuck behind the heavy pool's 2 slots, where they reached
    it one at a time: batches of one) and are answered by one shared search, each its own row."""
    from service.api.routes import search as route
    from service.app import create_app
    from service.engine import Engine

    coalescer = SearchCoalescer(max_running=1)
    monkeypatch.setattr(route, "COALESCER", coalescer)
    files = write_demo_slices(tmp_path / "data")
    settings = files.settings(tmp_path / "var", cache=False).model_copy(
        update={"heavy_concurrency": 2}
    )
    calls: list[int] = []
    release = threading.Event()
    real = Engine.search

    def held(self: Engine, queries: np.ndarray, **kwargs: object) -> SearchResult:
        calls.append(len(queries))
        if len(calls) == 1:
            assert release.wait(30)
        return real(self, queries, **kwargs)  # type: ignore[arg-type]

    queries = demo_queries(8)[0]
    app = create_app(settings, configure_logs=False)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://x", timeout=60) as client,
        ):
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.02)
            monkeypatch.setattr(Engine, "search", held)
            body = {"k": 5, "method": "dualis"}
            first = asyncio.ensure_future(
                client.post("/search", json=body | {"queries": [queries[0].tolist()]})
            )
            while not calls:
                await asyncio.sleep(0.01)
            rest = [
                asyncio.ensure_future(client.post("/search", json=body | {"queries": [q.tolist()]}))
                for q in queries[1:]
            ]
            for _ in range(1000):  # until the 7 wait in the coalescer (or fail after 10 s)
                if sum(len(w) for w in coalescer._waiting.values()) == 7:
                    break
                await asyncio.sleep(0.01)
            release.set()
            return [await first, *[await r for r in rest]]

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 8
    assert calls == [1, 7]  # the lone first search, then one shared search of the 7
    engine = load_engine(settings)
    for q, response in zip(queries, responses, strict=True):
        want = engine.search(q[None], k=5, method="dualis", invgc=settings.invgc)
        assert [h["id"] for h in response.json()["results"][0]] == want.ids[0]
