"""API key: writes need it, reads only with HUBLESS_AUTH_READS; both header forms work; the key
never reaches the logs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.api import DemoFiles, Serve, assert_error

KEY = "s3cret-Key-9f8e7d"
WRITES = [
    ("PUT", "/gallery", {"json": {"items": [{"id": "w", "embedding": [0.2] * 384}]}}),
    ("POST", "/gallery/delete", {"json": {"ids": ["w"]}}),
    ("DELETE", "/gallery/w", {}),
    ("POST", "/admin/snapshot", {}),
]
READS = [
    ("POST", "/search", {"json": {"query": [0.1] * 384, "k": 2}}),
    ("GET", "/gallery", {}),
    ("GET", "/diagnostics", {"params": {"k": 2}}),
    ("POST", "/diagnostics", {"json": {"queries": [[0.1] * 384], "k": 2}}),
]


def _assert_unauthorized(response, says: str) -> None:
    assert_error(response, 401, says=says)
    assert response.headers["www-authenticate"] == "Bearer"


def test_writes_need_the_key(serve: Serve, demo: DemoFiles) -> None:
    client = serve(api_key=KEY)
    for method, path, kwargs in WRITES:
        _assert_unauthorized(client.request(method, path, **kwargs), says="missing API key")
        wrong = {"Authorization": "Bearer not-the-key"}
        response = client.request(method, path, headers=wrong, **kwargs)
        _assert_unauthorized(response, says="invalid API key")
        response = client.request(method, path, headers={"X-API-Key": KEY + "x"}, **kwargs)
        _assert_unauthorized(response, says="invalid API key")
    assert client.get("/readyz").json()["version"] == 1  # nothing was changed

    bearer, header = {"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}
    put, delete_batch, delete_one, snapshot = WRITES
    assert client.request(put[0], put[1], headers=bearer, **put[2]).status_code == 200
    response = client.request(delete_batch[0], delete_batch[1], headers=header, **delete_batch[2])
    assert response.status_code == 200
    lower = {"authorization": f"bearer {KEY}"}  # the scheme is case-insensitive
    assert client.request(put[0], put[1], headers=lower, **put[2]).status_code == 200
    assert client.request(delete_one[0], delete_one[1], headers=header).status_code == 200
    assert client.request(snapshot[0], snapshot[1], headers=bearer).status_code == 200
    # reads stay open by default
    for method, path, kwargs in READS:
        assert client.request(method, path, **kwargs).status_code == 200, path


#: Reads the app serves besides the routes above: the key covers them too (issue 14, #8).
OTHER_READS = [("GET", path, {}) for path in ("/metrics", "/docs", "/openapi.json")]


def test_reads_need_the_key_when_configured(serve: Serve) -> None:
    client = serve(api_key=KEY, auth_reads=True)
    for method, path, kwargs in READS + OTHER_READS:
        _assert_unauthorized(client.request(method, path, **kwargs), says="missing API key")
        response = client.request(method, path, headers={"X-API-Key": KEY}, **kwargs)
        assert response.status_code == 200, path
    _assert_unauthorized(client.get("/no-such-path"), says="missing API key")
    # the kubelet's probes send no key: liveness and readiness stay open, readiness then says
    # only its status (the gallery's size and version need the key)
    assert client.get("/healthz").json() == {"status": "ok"}
    anonymous = client.get("/readyz").json()
    assert anonymous["status"] == "ready" and anonymous["gallery_size"] is None
    detailed = client.get("/readyz", headers={"X-API-Key": KEY}).json()
    assert detailed["status"] == "ready" and detailed["gallery_size"] > 0


def test_no_key_configured_means_open_writes(client: TestClient) -> None:
    response = client.post("/gallery/delete", json={"ids": ["no-such-id"]})
    assert response.status_code == 404  # past auth, stopped by the unknown id


def test_the_key_never_reaches_the_logs(
    serve: Serve, caplog: pytest.LogCaptureFixture, probes: np.ndarray
) -> None:
    caplog.set_level(logging.DEBUG)
    client = serve(api_key=KEY, auth_reads=True)
    good, bad = {"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}-wrong"}
    for headers in (good, bad, {"Authorization": f"Bearer {KEY}"}):
        for method, path, kwargs in WRITES + READS:
            client.request(method, path, headers=headers, **kwargs)
    client.post("/search", json={"query": [0.0] * 384}, headers=good)  # an error path too
    assert any(r.name == "service.access" for r in caplog.records)  # requests were logged
    for record in caplog.records:
        assert KEY not in str(record.__dict__), record
    assert KEY not in caplog.text


@pytest.mark.parametrize("configured", ["", KEY])
def test_an_empty_key_authorises_nothing(serve: Serve, configured: str) -> None:
    client = serve(api_key=configured)
    put = WRITES[0]
    for headers in ({"X-API-Key": ""}, {"Authorization": "Bearer "}, {"Authorization": ""}):
        response = client.request(put[0], put[1], headers=headers, **put[2])
        _assert_unauthorized(response, says="missing API key")
