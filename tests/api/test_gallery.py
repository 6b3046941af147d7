"""/gallery: paging, item details, upserts, updates and deletes over HTTP."""

from __future__ import annotations

from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.algorithms import METHODS
from tests.support.api import DemoFiles, Serve, assert_error, search

#: ids a client may well use; each must work as a path segment once percent-encoded
AWKWARD_IDS = ["a b", "a/b", "/leading", "trailing/", "x%y", "q?x=1#f", "ünï cödé", "delete"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _path(item_id: str) -> str:
    return "/gallery/" + quote(item_id, safe="")


def _item(item_id: str, embedding: np.ndarray, metadata: object = None) -> dict:
    return {"id": item_id, "embedding": embedding.tolist(), "metadata": metadata}


def _all_ids(client: TestClient) -> list[str]:
    page = client.get("/gallery", params={"limit": 1000}).json()
    assert page["total"] == len(page["items"])
    return [item["id"] for item in page["items"]]


def test_paging_covers_the_gallery_in_order(client: TestClient, demo: DemoFiles) -> None:
    seen = []
    for offset in range(0, 300, 70):
        page = client.get("/gallery", params={"offset": offset, "limit": 70}).json()
        assert (page["total"], page["offset"], page["limit"], page["version"]) == (
            300,
            offset,
            70,
            1,
        )
        assert len(page["items"]) == min(70, 300 - offset)
        seen += [item["id"] for item in page["items"]]
    assert seen == demo.ids
    default = client.get("/gallery").json()
    assert (default["offset"], default["limit"], len(default["items"])) == (0, 100, 100)
    assert client.get("/gallery", params={"offset": 300}).json()["items"] == []


def test_item_detail_with_and_without_embedding(client: TestClient, demo: DemoFiles) -> None:
    item_id = demo.ids[7]
    plain = client.get(_path(item_id)).json()
    assert plain["id"] == item_id and plain["embedding"] is None and plain["metadata"] is None
    assert plain["version"] == 1
    detail = client.get(_path(item_id), params={"embedding": "true"}).json()
    np.testing.assert_allclose(detail["embedding"], _unit(demo.embeddings[7]), atol=1e-6)
    assert {k: v for k, v in detail.items() if k != "embedding"} == {
        k: v for k, v in plain.items() if k != "embedding"
    }
    # the statistics are SPEC's log Z of the item against each bank
    bq = _unit(np.load(demo.query_bank).astype(np.float64))
    g = _unit(demo.embeddings[7].astype(np.float64))
    log_z = np.logaddexp.reduce((1 / 1.99) * (bq @ g))
    assert detail["stats"]["log_z_query_bank"] == pytest.approx(log_z, abs=1e-4)
    assert set(detail["invgc_stats"]) == set(detail["stats"])


def test_insert_update_delete_round_trip(serve: Serve, demo: DemoFiles) -> None:
    client = serve()
    rng = np.random.default_rng(0)
    new = rng.normal(size=(3, 384)).astype(np.float32)
    metadata = {"caption": "ünïcode ✓", "tags": ["a", "b"], "nested": {"n": 1.5, "x": None}}
    response = client.put(
        "/gallery", json={"items": [_item(f"new-{i}", new[i], metadata) for i in range(3)]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "version": 2,
        "size": 303,
        "inserted": 3,
        "updated": 0,
        "deleted": 0,
        "warnings": [],
    }
    detail = client.get(_path("new-1"), params={"embedding": True}).json()
    assert detail["metadata"] == metadata and detail["version"] == 2
    np.testing.assert_allclose(detail["embedding"], _unit(new[1]), atol=1e-6)
    listed = client.get("/gallery", params={"offset": 300}).json()["items"]
    assert listed == [{"id": f"new-{i}", "metadata": metadata} for i in range(3)]
    hit = search(client, new[2:3], k=1, method="raw")["results"][0][0]
    assert hit["id"] == "new-2" and hit["similarity"] == pytest.approx(1.0, abs=1e-5)

    # update: same id, new embedding and metadata; the size stays, the old vector is gone
    old_id = demo.ids[0]
    replacement = _item(old_id, new[0] + 0.5 * new[1], {"v": 2})
    response = client.put("/gallery", json={"items": [replacement]})
    assert response.json() == {
        "version": 3,
        "size": 303,
        "inserted": 0,
        "updated": 1,
        "deleted": 0,
        "warnings": [],
    }
    detail = client.get(_path(old_id), params={"embedding": True}).json()
    assert detail["metadata"] == {"v": 2}
    np.testing.assert_allclose(detail["embedding"], _unit(new[0] + 0.5 * new[1]), atol=1e-6)
    ids = _all_ids(client)
    assert len(ids) == len(set(ids)) == 303
    hits = search(client, demo.embeddings[:1], k=303, method="raw")["results"][0]
    similarity = next(h["similarity"] for h in hits if h["id"] == old_id)
    expected = _unit(demo.embeddings[0]) @ _unit(new[0] + 0.5 * new[1])
    assert similarity == pytest.approx(expected, abs=1e-5)

    # delete one by path, then a batch
    response = client.delete(_path("new-0"))
    assert response.json() == {
        "version": 4,
        "size": 302,
        "inserted": 0,
        "updated": 0,
        "deleted": 1,
        "warnings": [],
    }
    assert_error(client.get(_path("new-0")), 404, "id")
    # a repeated id is refused, as PUT refuses one (nothing deleted)
    response = client.post("/gallery/delete", json={"ids": ["new-1", "new-2", "new-1"]})
    assert_error(response, 422, "ids")
    assert "duplicate ids: ['new-1']" in response.json()["error"]["message"]
    response = client.post("/gallery/delete", json={"ids": ["new-1", "new-2"]})
    assert response.json() == {
        "version": 5,
        "size": 300,
        "inserted": 0,
        "updated": 0,
        "deleted": 2,
        "warnings": [],
    }
    assert set(_all_ids(client)) == set(demo.ids)
    found = search(client, new, k=300, method="dualdis")["results"]
    assert all(not h["id"].startswith("new-") for hits in found for h in hits)
    metrics = client.get("/metrics").text
    assert "hubless_gallery_size 300.0" in metrics and "hubless_gallery_version 5.0" in metrics


def test_awkward_ids_work_in_paths(serve: Serve) -> None:
    client = serve()
    vectors = np.random.default_rng(1).normal(size=(len(AWKWARD_IDS), 384)).astype(np.float32)
    items = [_item(i, v, {"id": i}) for i, v in zip(AWKWARD_IDS, vectors, strict=True)]
    assert client.put("/gallery", json={"items": items}).status_code == 200
    for item_id in AWKWARD_IDS:
        detail = client.get(_path(item_id))
        assert detail.status_code == 200, (item_id, detail.text)
        assert detail.json()["id"] == item_id and detail.json()["metadata"] == {"id": item_id}
    for item_id in AWKWARD_IDS:
        assert client.delete(_path(item_id)).status_code == 200, item_id
        assert_error(client.get(_path(item_id)), 404)
    assert client.get("/readyz").json()["gallery_size"] == 300


def test_an_emptied_gallery_still_answers(serve: Serve, demo: DemoFiles) -> None:
    client = serve()
    assert client.post("/gallery/delete", json={"ids": demo.ids}).json()["size"] == 0
    probe = demo.embeddings[:2]
    for method in METHODS:
        for invgc in (False, True):
            body = search(client, probe, k=5, method=method, invgc=invgc)
            assert body["results"] == [[], []], (method, invgc)
    assert client.get("/gallery").json()["items"] == []
    assert_error(client.get("/diagnostics"), 422, says="empty")
    queries = {"queries": probe.tolist()}
    assert_error(client.post("/diagnostics", json=queries), 422, says="empty")
    item = _item("again", demo.embeddings[0])
    assert client.put("/gallery", json={"items": [item]}).json()["size"] == 1
    for method in ("dis", "dualdis"):
        assert search(client, probe, k=5, method=method)["results"][0][0]["id"] == "again"
