"""Liveness, readiness, metrics, OpenAPI, request ids, compaction, unexpected errors."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from . import Serve, assert_error


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "detail": None, "gallery_size": 300, "version": 1}


def test_unexpected_errors_are_500_with_the_request_id(
    serve: Serve, probes: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = serve().app
    engine = app.state.runtime.engine

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine, "search", broken)
    client = TestClient(app, raise_server_exceptions=False)  # lifespan already running
    response = client.post(
        "/search", json={"query": probes[0].tolist()}, headers={"X-Request-ID": "trace-me-42"}
    )
    error = assert_error(response, 500)
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "trace-me-42" in error["message"]
    assert response.headers["x-request-id"] == "trace-me-42"
