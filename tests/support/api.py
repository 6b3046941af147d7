"""HTTP API test helpers: a TestClient of a real app, and assertions on its answers.

Every service in these tests runs the real engine on the small demo slices of
:mod:`tests.support.demo`; the startup precompute runs in its background thread as in
production, and :func:`running` waits for ``/readyz`` before handing out the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine import Engine
from service.engine.startup import load_engine
from service.settings import Settings
from tests.support.demo import DEMO_DIR, DemoFiles

__all__ = [
    "DemoFiles",
    "Serve",
    "assert_error",
    "assert_same_hits",
    "running",
    "search",
    "snapshot_of",
    "wait_ready",
]

#: the ``serve`` fixture: ``serve(**settings_overrides) -> TestClient`` of a fresh service
Serve = Callable[..., TestClient]

READY_TIMEOUT = 30.0


def wait_ready(client: TestClient, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """Poll ``/readyz`` until 200; fail early (with the reason) if startup failed."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
        body = response.json()
        assert body["status"] != "failed", f"startup failed: {body['detail']}"
        assert time.monotonic() < deadline, f"not ready after {timeout} s: {body}"
        time.sleep(0.01)


@contextmanager
def running(
    settings: Settings,
    *,
    loader: Callable[[Settings], Engine] = load_engine,
    ready: bool = True,
) -> Iterator[TestClient]:
    """A client of a fresh app (lifespan entered); by default only once it is ready."""
    app = create_app(settings, loader=loader, configure_logs=False)
    with TestClient(app) as client:
        if ready:
            wait_ready(client)
        yield client


def assert_error(
    response: httpx.Response, status: int, field: str | None = None, says: str | None = None
) -> dict[str, Any]:
    """The response is the documented error body with this status; ``field`` (if given) is
    named both in ``error.field`` (as a prefix: list items add ``.index``) and the message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status
    assert error["code"] and error["message"]
    if field is not None:
        assert (error["field"] or "").startswith(field), error
        assert field.split("[")[0] in error["message"], error
    if says is not None:
        assert says.lower() in error["message"].lower(), error
    return error


def search(client: TestClient, queries: np.ndarray | list, **body: Any) -> dict[str, Any]:
    """POST /search with ``queries`` (array or lists); asserts 200 and returns the body."""
    rows = queries.tolist() if isinstance(queries, np.ndarray) else queries
    response = client.post("/search", json={"queries": rows, **body})
    assert response.status_code == 200, response.text
    return response.json()


def snapshot_of(client: TestClient, probes: np.ndarray) -> dict[str, Any]:
    """Everything a failed change must leave alone: version, ids in order, search results."""
    page = client.get("/gallery", params={"limit": 1000}).json()
    results = {
        (method, invgc): search(client, probes, k=5, method=method, invgc=invgc)["results"]
        for method in ("dualis", "dualdis")
        for invgc in (False, True)
    }
    return {"version": page["version"], "items": page["items"], "results": results}


def assert_same_hits(actual: list[list[dict]], expected: list[list[dict]], atol: float) -> None:
    """Same ids and ranks per query; scores and similarities equal within ``atol`` (float32
    BLAS kernels round differently for different batch shapes)."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert [(h["id"], h["rank"]) for h in got] == [(h["id"], h["rank"]) for h in want]
        for key in ("score", "similarity"):
            np.testing.assert_allclose([h[key] for h in got], [h[key] for h in want], atol=atol)


def demo_rows(start: int, stop: int) -> tuple[list[str], np.ndarray]:
    """Real items beyond the served slice: ids and float32 embeddings of demo rows."""
    ids = (DEMO_DIR / "gallery_ids.txt").read_text(encoding="utf-8").splitlines()
    return ids[start:stop], np.load(DEMO_DIR / "gallery.npy")[start:stop].astype(np.float32)


def put(client: TestClient, ids: list[str], embeddings: np.ndarray) -> dict[str, Any]:
    """Upsert items over HTTP; asserts success."""
    items = [{"id": i, "embedding": e.tolist()} for i, e in zip(ids, embeddings, strict=True)]
    response = client.put("/gallery", json={"items": items})
    assert response.status_code == 200, response.text
    return response.json()
