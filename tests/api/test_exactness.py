"""Exactness of gallery changes: a service changed over HTTP answers exactly like a fresh
service started on the resulting gallery, for every method, with InvGC on and off, for
LocalAdj and full adjacency."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.algorithms import METHODS
from tests.support.api import DemoFiles, Serve, demo_rows, put, running, search
from tests.support.demo import demo_queries, write_gallery

#: A changed service and a fresh one compute the same float32 sums over other row batches (a
#: batch of 25 new items vs the whole gallery), so BLAS may block and order them differently,
#: and each kernel (OPENBLAS_CORETYPE) does so its own way. A float32 dot product of d terms
#: with Σ|q_i g_i| ≤ 1 (unit vectors) is off by at most d·eps; each bank statistic and bias term
#: adds a few more roundings (the +8), and both services err, hence twice that, scaled by the
#: score's magnitude (scores are sums of terms of about its size). 1e-6 held on one kernel only.
UNIT = 2 * (384 + 8) * float(np.finfo(np.float32).eps)


def _tol(score: float) -> float:
    return UNIT * (1 + abs(score))


def _delete(client: TestClient, ids: list[str]) -> dict:
    response = client.post("/gallery/delete", json={"ids": ids})
    assert response.status_code == 200, response.text
    return response.json()


def _change(client: TestClient, demo: DemoFiles) -> None:
    """Inserts, updates of existing ids (old and freshly inserted) and deletes, interleaved."""
    new_ids, new = demo_rows(300, 340)
    assert put(client, new_ids[:25], new[:25])["inserted"] == 25
    # update existing ids with other real embeddings (one of them inserted just above)
    updated = [demo.ids[3], demo.ids[50], demo.ids[51], demo.ids[299], new_ids[0]]
    assert put(client, updated, new[25:30])["updated"] == 5
    assert _delete(client, [demo.ids[0], demo.ids[10], demo.ids[50], new_ids[5]])["deleted"] == 4
    result = put(client, [*new_ids[30:40], demo.ids[10]], np.vstack([new[30:40], new[0:1]]))
    assert (result["inserted"], result["updated"]) == (11, 0)  # demo.ids[10] was deleted
    response = client.delete("/gallery/" + quote(demo.ids[100], safe=""))
    assert response.status_code == 200
    assert put(client, [demo.ids[200]], new[1:2] + new[2:3])["updated"] == 1


def _served_gallery(client: TestClient) -> tuple[list[str], np.ndarray]:
    """The served ids in gallery order and their (normalised) embeddings."""
    page = client.get("/gallery", params={"limit": 1000}).json()
    ids = [item["id"] for item in page["items"]]
    assert len(ids) == page["total"]
    vectors = [
        client.get("/gallery/" + quote(i, safe=""), params={"embedding": True}).json()["embedding"]
        for i in ids
    ]
    return ids, np.asarray(vectors, dtype=np.float32)


def _assert_equivalent(changed: list[list[dict]], fresh: list[list[dict]]) -> None:
    """Same ranking and scores within tolerance. Where two items score that close
    their order may legitimately differ (float32 rounding): such ids are compared as a set."""
    for got, want in zip(changed, fresh, strict=True):
        assert [h["rank"] for h in got] == [h["rank"] for h in want]
        scores = np.array([h["score"] for h in want])
        tol = UNIT * (1 + np.abs(scores))
        assert (np.abs([h["score"] for h in got] - scores) <= tol).all(), (got, want)
        sims = np.array([h["similarity"] for h in want])
        assert (np.abs([h["similarity"] for h in got] - sims) <= UNIT * 2).all(), (got, want)
        start = 0
        for end in range(1, len(want) + 1):  # runs of scores closer than their tolerance
            if end == len(want) or scores[end - 1] - scores[end] > 2 * _tol(scores[end - 1]):
                same = {h["id"] for h in got[start:end]} == {h["id"] for h in want[start:end]}
                assert same or end == len(want), (got[start:end], want[start:end])
                start = end


@dataclass(frozen=True)
class Resulting:
    """The gallery a changed service ends with, and that service (LocalAdj) still running."""

    client: TestClient
    ids: list[str]
    embeddings: np.ndarray
    files: DemoFiles


@pytest.fixture(scope="module")
def resulting(demo: DemoFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resulting]:
    with running(demo.settings(tmp_path_factory.mktemp("changed"))) as client:
        _change(client, demo)
        ids, embeddings = _served_gallery(client)
        files = write_gallery(tmp_path_factory.mktemp("resulting"), ids, embeddings, demo)
        yield Resulting(client, ids, embeddings, files)


@pytest.mark.parametrize("adjacency", ["local", "full"])
def test_changes_equal_a_fresh_start(
    serve: Serve, demo: DemoFiles, resulting: Resulting, adjacency: str
) -> None:
    assert len(resulting.ids) == 300 + 35 - 4
    if adjacency == "local":
        changed = resulting.client
    else:  # the same changes give the same original gallery whatever the adjacency
        changed = serve(invgc_adjacency=adjacency)
        _change(changed, demo)
        page = changed.get("/gallery", params={"limit": 1000}).json()
        assert [item["id"] for item in page["items"]] == resulting.ids
    fresh = serve(files=resulting.files, invgc_adjacency=adjacency)
    assert fresh.get("/gallery", params={"limit": 1000}).json()["items"] == [
        {"id": i, "metadata": None} for i in resulting.ids
    ]
    queries, _ = demo_queries(30, start=290)  # true items: old, new, updated and deleted ones
    queries = np.vstack([queries, resulting.embeddings[-10:]])  # exact copies of changed items
    for method in METHODS:
        for invgc in (False, True):
            got = search(changed, queries, k=20, method=method, invgc=invgc)
            want = search(fresh, queries, k=20, method=method, invgc=invgc)
            assert (got["gallery_version"], want["gallery_version"]) == (7, 1)
            _assert_equivalent(got["results"], want["results"])
