"""Liveness, readiness, metrics, OpenAPI, request ids, compaction, unexpected errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.api import Serve, assert_error, search


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


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-1"}).headers["x-request-id"] == (
        "abc-1"
    )
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/healthz").headers["x-request-id"]


def test_prometheus_metrics(client: TestClient, probes: np.ndarray) -> None:
    search(client, probes[:3], method="csls", invgc=False)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    for expected in (
        "hubless_gallery_size 300.0",
        "hubless_gallery_version 1.0",
        "hubless_ready 1.0",
        'hubless_search_queries_total{invgc="false",method="csls"} 3.0',
    ):
        assert expected in lines
    requests = [line for line in lines if line.startswith("hubless_requests_total{")]
    assert any('route="/search"' in line and 'status="200"' in line for line in requests)
    assert any(line.startswith("hubless_request_seconds_bucket{") for line in lines)
    assert any(line.startswith("hubless_precompute_seconds ") for line in lines)


#: every route the service must document, with the models of its body and 200 response
ROUTES = {
    ("/search", "post"): ("SearchRequest", "SearchResponse"),
    ("/gallery", "get"): (None, "GalleryPage"),
    ("/gallery", "put"): ("UpsertRequest", "ChangeResponse"),
    ("/gallery/delete", "post"): ("DeleteRequest", "ChangeResponse"),
    ("/gallery/{item_id}", "get"): (None, "GalleryItemDetail"),
    ("/gallery/{item_id}", "delete"): (None, "ChangeResponse"),
    ("/diagnostics", "get"): (None, "DiagnosticsResponse"),
    ("/diagnostics", "post"): ("DiagnosticsRequest", "DiagnosticsResponse"),
    ("/healthz", "get"): (None, "Health"),
    ("/readyz", "get"): (None, "Readiness"),
    ("/info", "get"): (None, "Info"),
    ("/metrics", "get"): (None, None),
    ("/admin/snapshot", "post"): (None, "Readiness"),
    ("/admin/query-bank/refresh", "post"): (None, "LiveQueryBankOut"),
}


def _ref(schema: dict) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == set(ROUTES)
    schemas = spec["components"]["schemas"]
    for (path, method), (request, response) in ROUTES.items():
        operation = spec["paths"][path][method]
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        assert _ref(body.get("schema", {})) == request, (path, method)
        ok = operation["responses"]["200"]["content"]
        if response is not None:
            assert _ref(ok["application/json"]["schema"]) == response, (path, method)
        else:
            assert "text/plain" in ok
        for model in filter(None, (request, response)):
            assert schemas[model]["properties"], model
    search_schema = schemas["SearchRequest"]["properties"]
    assert set(search_schema) == {
        "queries",
        "query",
        "k",
        "method",
        "offset",
        "score_threshold",
        "invgc",
        "query_ids",
        "texts",
        "filter",
        "with_metadata",
    }
    for status in ("413", "422"):
        error = spec["paths"]["/search"]["post"]["responses"][status]["content"]
        assert _ref(error["application/json"]["schema"]) == "ErrorResponse"


def test_admin_snapshot_keeps_the_gallery(serve: Serve, probes: np.ndarray) -> None:
    client = serve()
    vector = probes[0].tolist()
    client.put("/gallery", json={"items": [{"id": "added", "embedding": vector}]})
    before = search(client, probes[:3], k=5)
    response = client.post("/admin/snapshot")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "detail": None,
        "gallery_size": 301,
        "version": 2,
    }
    assert search(client, probes[:3], k=5) == before


def test_docs_work_offline_with_an_authorize_button(client: TestClient) -> None:
    """/docs loads Swagger UI from the service itself (no CDN: blank offline otherwise), and
    the OpenAPI declares both ways of presenting the API key."""
    page = client.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text), page.text
    assert "https://" not in page.text and "http://" not in page.text
    assets = re.findall(r"""(?:src|href)="(/docs/assets/[^"]+)""", page.text)
    assert len(assets) >= 2
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["HTTPBearer"].items()
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"
    assert {"HTTPBearer": []} in spec["paths"]["/gallery"]["put"]["security"]
    assert client.get("/redoc").status_code == 404  # ReDoc exists only on a CDN
