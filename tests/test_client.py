"""The typed client against the in-process app (sync over TestClient, async over
ASGITransport) and against a real uvicorn process: results, changes, and errors as exceptions."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.models import ChangeResponse, GalleryPage, Readiness, SearchResponse
from service.app import create_app
from service.client import (
    AsyncHublessClient,
    HublessClient,
    HublessConnectionError,
    HublessError,
    HublessHTTPError,
    NotReadyError,
)
from service.settings import DEMO_DIR, Settings
from tests.support.realserver import running_server

DIM = 384
API_KEY = "s3cret"


def _settings(tmp: Path, **extra: object) -> Settings:
    return Settings(data_dir=tmp, log_json=False, log_level="WARNING", **extra)  # type: ignore[arg-type]


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@dataclass
class InProcess:
    app: FastAPI
    http: TestClient
    client: HublessClient


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """A ready demo service in-process, writes guarded by an API key (reads open)."""
    settings = _settings(
        tmp_path_factory.mktemp("app"), api_key=API_KEY, diagnostics_probes=50, invgc=True
    )
    app = create_app(settings, configure_logs=False)
    with TestClient(app) as http, HublessClient(http_client=http, api_key=API_KEY) as client:
        client.wait_ready(timeout=60)
        yield InProcess(app, http, client)


@pytest.fixture
def app_client(served: InProcess) -> HublessClient:
    return served.client


def test_search_returns_the_servers_model(app_client: HublessClient) -> None:
    queries = np.load(DEMO_DIR / "queries.npy")[:3]
    truth = (DEMO_DIR / "queries_truth.txt").read_text("utf-8").splitlines()[:3]
    answer = app_client.search(queries, k=5, method="dualis", invgc=False)
    assert isinstance(answer, SearchResponse)
    assert (answer.method, answer.invgc, answer.k) == ("dualis", False, 5)
    assert [len(hits) for hits in answer.results] == [5, 5, 5]
    assert all(hits[0].rank == 1 and hits[0].score >= hits[-1].score for hits in answer.results)
    assert any(t in [h.id for h in hits] for t, hits in zip(truth, answer.results, strict=True))
    # one 1-D vector is one query; offset pages past the first results
    single = app_client.search(queries[0], k=5, method="dualis", invgc=False)
    assert [h.id for h in single.results[0]] == [h.id for h in answer.results[0]]
    paged = app_client.search(queries[0], k=2, offset=3, method="dualis", invgc=False)
    assert [h.id for h in paged.results[0]] == [h.id for h in answer.results[0][3:5]]
    assert paged.results[0][0].rank == 4
    none = app_client.search(queries[0].tolist(), k=3, score_threshold=1e9)
    assert none.results == [[]]


def test_upsert_get_list_delete_round_trip(app_client: HublessClient) -> None:
    vectors = _vectors(2, seed=1)
    before = app_client.list_gallery(limit=1).total
    change = app_client.upsert(
        [
            {"id": "client/a", "embedding": vectors[0], "metadata": {"n": 1}},
            {"id": "client b", "embedding": vectors[1].tolist()},
        ]
    )
    assert isinstance(change, ChangeResponse)
    assert (change.inserted, change.size) == (2, before + 2)
    item = app_client.get_item("client/a", embedding=True)
    assert item.metadata == {"n": 1} and item.embedding is not None
    assert np.allclose(item.embedding, vectors[0] / np.linalg.norm(vectors[0]), atol=1e-6)
    hit = app_client.search(vectors[0], k=1, method="raw", invgc=False).results[0][0]
    assert hit.id == "client/a"
    page = app_client.list_gallery(offset=before, limit=10)
    assert isinstance(page, GalleryPage)
    assert [i.id for i in page.items] == ["client/a", "client b"]
    gone = app_client.delete(["client/a", "client b"])
    assert (gone.deleted, gone.size) == (2, before)
    with pytest.raises(HublessHTTPError) as info:
        app_client.get_item("client/a")
    assert (info.value.status, info.value.code) == (404, "not_found")


def test_errors_become_exceptions(app_client: HublessClient) -> None:
    with pytest.raises(HublessHTTPError) as info:
        app_client.delete("no-such-id")
    assert (info.value.status, info.value.code, info.value.field) == (404, "not_found", "ids")
    assert "no-such-id" in str(info.value)
    with pytest.raises(HublessHTTPError) as info:
        app_client.search(_vectors(1)[:, :10])
    assert (info.value.status, info.value.field) == (422, "queries")
    with pytest.raises(HublessHTTPError) as info:
        app_client.search(_vectors(1), method="nope")  # type: ignore[arg-type]
    assert (info.value.status, info.value.code, info.value.field) == (
        422,
        "invalid_request",
        "method",
    )
    with pytest.raises(ValueError, match="NaN"):
        app_client.search(np.full((1, DIM), np.nan))


def test_missing_api_key_is_401(served: InProcess) -> None:
    anonymous = HublessClient(http_client=served.http)
    with pytest.raises(HublessHTTPError) as info:
        anonymous.delete("anything")
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert isinstance(info.value, HublessError)


def test_diagnostics(app_client: HublessClient) -> None:
    queries = np.load(DEMO_DIR / "queries.npy")[:20]
    truth = (DEMO_DIR / "queries_truth.txt").read_text("utf-8").splitlines()[:20]
    report = app_client.diagnostics_with_probes(queries, truth_ids=truth, k=5, methods=["raw"])
    assert report.probe_source == "request"
    assert {(m.method, m.invgc) for m in report.methods} == {("raw", False), ("raw", True)}
    assert all(m.retrieval is not None and m.hubness.k == 5 for m in report.methods)
    assert app_client.diagnostics(k=5).probe_source == "query_bank"
    assert app_client.health().status == "ok"


def test_async_client_over_asgi(served: InProcess) -> None:
    app = served.app  # ASGITransport runs no lifespan: the fixture's TestClient started it

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        http = httpx.AsyncClient(transport=transport, base_url="http://asgi")
        async with http, AsyncHublessClient(http_client=http, api_key=API_KEY) as client:
            assert (await client.wait_ready(timeout=5)).status == "ready"
            answer = await client.search(_vectors(2), k=3, method="dualdis")
            assert [len(h) for h in answer.results] == [3, 3]
            change = await client.upsert([{"id": "async", "embedding": _vectors(1)[0]}])
            assert change.inserted == 1
            assert (await client.get_item("async")).id == "async"
            assert (await client.delete("async")).deleted == 1
            with pytest.raises(HublessHTTPError, match="404"):
                await client.delete("async")

    asyncio.run(run())


def test_not_ready_and_failed_startup(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_loader(settings: Settings):  # type: ignore[no-untyped-def]
        release.wait(30)
        raise RuntimeError("disk on fire")

    app = create_app(_settings(tmp_path), loader=slow_loader, configure_logs=False)
    with TestClient(app) as http, HublessClient(http_client=http) as client:
        readiness = client.ready()
        assert isinstance(readiness, Readiness) and readiness.status == "starting"
        with pytest.raises(NotReadyError) as info:
            client.search(_vectors(1))
        assert (info.value.status, info.value.code) == (503, "not_ready")
        with pytest.raises(NotReadyError, match="not ready after"):
            client.wait_ready(timeout=0.2, interval=0.05)
        release.set()
        with pytest.raises(NotReadyError, match="disk on fire"):
            client.wait_ready(timeout=10, interval=0.05)


def test_connection_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on (closed right away)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with HublessClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(HublessConnectionError, match="failed"):
            client.health()
        with pytest.raises(NotReadyError, match="not ready after"):
            client.wait_ready(timeout=0.3, interval=0.05)


# --- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``uvicorn service.app:app`` on 127.0.0.1 and a free port, on the demo data."""
    command = [sys.executable, "-m", "uvicorn", "service.app:app"]
    with running_server(command, tmp_path_factory.mktemp("server")) as url:
        yield url


def test_real_server_search_upsert_delete_errors(server: str) -> None:
    with HublessClient(server, timeout=10) as client:
        ready = client.ready()
        assert ready.status == "ready" and ready.gallery_size == 2000
        vector = _vectors(1, seed=7)
        assert client.upsert([{"id": "live", "embedding": vector[0]}]).size == 2001
        hits = client.search(vector, k=3, method="raw", invgc=False).results[0]
        assert hits[0].id == "live" and hits[0].similarity == pytest.approx(1, abs=1e-5)
        assert client.delete("live").size == 2000
        with pytest.raises(HublessHTTPError) as info:
            client.delete("live")
        assert info.value.status == 404
        with pytest.raises(HublessHTTPError) as info:
            client.search(vector, k=0)
        assert (info.value.status, info.value.field) == (422, "k")


def test_real_server_async(server: str) -> None:
    async def run() -> list[int]:
        async with AsyncHublessClient(server, timeout=10) as client:
            answers = await asyncio.gather(
                *(client.search(_vectors(4, seed=s), k=2) for s in range(3))
            )
            return [len(a.results) for a in answers]

    assert asyncio.run(run()) == [4, 4, 4]


def test_unusual_responses_still_raise_clear_errors() -> None:
    """A proxy's plain-text error and a body that is not the expected model."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"unexpected": True})
        return httpx.Response(502, text="Bad gateway")

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://proxy")
    with http, HublessClient(http_client=http) as client:
        with pytest.raises(HublessHTTPError) as info:
            client.list_gallery()
        assert (info.value.status, info.value.code, info.value.message) == (
            502,
            "http_error",
            "Bad gateway",
        )
        with pytest.raises(HublessError, match="unexpected Health"):
            client.health()
