"""Readiness: while the startup precompute runs (or after it failed) the process is alive,
/readyz says why it is not ready, and every data endpoint is a clear 503."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.engine import Engine
from service.engine.startup import load_engine
from service.settings import Settings
from tests.support.api import Serve, assert_error, search, wait_ready

DATA_REQUESTS = [
    ("post", "/search", {"json": {"query": [0.1] * 384}}),
    ("get", "/gallery", {}),
    ("get", "/gallery/anything", {}),
    ("put", "/gallery", {"json": {"items": [{"id": "x", "embedding": [0.1] * 384}]}}),
    ("delete", "/gallery/anything", {}),
    ("post", "/gallery/delete", {"json": {"ids": ["x"]}}),
    ("get", "/diagnostics", {}),
    ("post", "/diagnostics", {"json": {"queries": [[0.1] * 384]}}),
    ("post", "/admin/snapshot", {}),
]


def _settled(client: TestClient, timeout: float = 30.0) -> httpx.Response:
    """/readyz once startup is no longer in progress."""
    deadline = time.monotonic() + timeout
    while (readyz := client.get("/readyz")).json()["status"] == "starting":
        assert time.monotonic() < deadline, "startup neither finished nor failed"
        time.sleep(0.01)
    return readyz


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a loader thread blocked


def test_not_ready_while_precomputing(
    serve: Serve, gate: threading.Event, probes: np.ndarray
) -> None:
    def blocked_loader(settings: Settings) -> Engine:
        assert gate.wait(timeout=30), "the test never released the loader"
        return load_engine(settings)

    client = serve(loader=blocked_loader, ready=False)
    assert client.get("/healthz").status_code == 200
    readyz = client.get("/readyz")
    assert readyz.status_code == 503
    assert readyz.json()["status"] == "starting"
    for method, path, kwargs in DATA_REQUESTS:
        response = client.request(method.upper(), path, **kwargs)
        error = assert_error(response, 503, says="not ready")
        assert "precompute in progress" in error["message"], (method, path)
        assert response.headers["retry-after"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "hubless_ready 0.0" in metrics.text

    gate.set()
    assert wait_ready(client)["gallery_size"] == 300
    assert search(client, probes[:2], k=3)["gallery_version"] == 1
    assert client.get("/gallery").status_code == 200
    assert client.get("/diagnostics", params={"k": 3}).status_code == 200


def test_failed_startup_is_reported(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    def failing_loader(settings: Settings) -> Engine:
        raise OSError("disk on fire")

    client = serve(loader=failing_loader, ready=False)
    readyz = _settled(client)
    assert readyz.status_code == 503
    assert readyz.json()["status"] == "failed"
    assert "disk on fire" in readyz.json()["detail"]
    assert client.get("/healthz").status_code == 200
    for method, path, kwargs in DATA_REQUESTS:
        response = client.request(method.upper(), path, **kwargs)
        assert_error(response, 503, says="disk on fire")
    assert any("startup failed" in r.getMessage() for r in caplog.records)


def test_unusable_data_files_fail_startup_with_the_file_named(serve: Serve, tmp_path: Path) -> None:
    client = serve(ready=False, gallery=tmp_path / "missing.npy")
    readyz = _settled(client).json()
    assert readyz["status"] == "failed"
    assert "missing.npy" in readyz["detail"]
